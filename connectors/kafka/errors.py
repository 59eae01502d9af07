"""The Kafka connectors' errors, typed by what to do next (pure: importable
without kafka-python, so the CLI names them without loading the client)."""
from __future__ import annotations


class KafkaConnectorError(RuntimeError):
    """Base of this module's errors; the message is one line naming the bootstrap."""


class KafkaUnavailable(KafkaConnectorError):
    """Kafka cannot be reached, or did not acknowledge within the client's own
    retries (delivery timeout): stop with this message, check the broker."""


class KafkaRejected(KafkaConnectorError):
    """The broker refused a request for a reason retrying cannot fix (record
    too large, bad configuration, ...): stop with this message, fix the cause."""


class TopicMissing(KafkaRejected):
    """The topic does not exist (create it with `ensure_topic`)."""


class TopicChanged(KafkaConnectorError):
    """The topic was deleted and re-created (or the in-memory broker restarted)
    since the recovery snapshot was taken: the stored offsets belong to another
    topic. Start with a fresh recovery directory."""
