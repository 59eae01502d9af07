"""Kafka `bars` topic: this package's errors and the admin I/O
(`ensure_topic`, `topic_partitions`, `topic_identity`). See `connectors.kafka`
for the Tansu facts relied on (admin describe never auto-creates a topic).
"""
from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from connectors.kafka.codec import _one_line


# the errors live in connectors.kafka.errors (importable without kafka-python)
from connectors.kafka.errors import (  # noqa: E402,F401
    KafkaConnectorError,
    KafkaRejected,
    KafkaUnavailable,
    TopicChanged,
    TopicMissing,
)


def _typed(exc: BaseException, bootstrap: str, what: str) -> KafkaConnectorError:
    """kafka-python error -> KafkaUnavailable (retriable kinds: the client's
    retries already ran out) or KafkaRejected (the rest)."""
    if isinstance(exc, KafkaConnectorError):
        return exc
    retriable = getattr(exc, "retriable", False)
    if retriable or isinstance(exc, (KafkaTimeoutError, KafkaConnectionError,
                                     ConnectionError, TimeoutError)):
        return KafkaUnavailable(f"Kafka at {bootstrap} unavailable while {what}: {_one_line(exc)}")
    return KafkaRejected(f"Kafka at {bootstrap} rejected {what}: {_one_line(exc)}")


# ---------------------------------------------------------------- admin I/O
def _admin(bootstrap: str, timeout_ms: int):
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=timeout_ms,
                                request_timeout_ms=timeout_ms, client_id="thousandcuts-admin")
    except Exception as exc:
        raise _typed(exc, bootstrap, "connecting") from None


def _describe(admin, bootstrap: str, topic: str) -> dict | None:
    """The topic's metadata, None when it does not exist (never creates it)."""
    try:
        (meta,) = admin.describe_topics([topic])
    except Exception as exc:
        raise _typed(exc, bootstrap, f"describing topic {topic}") from None
    if meta.get("error_code") == 3:  # UNKNOWN_TOPIC_OR_PARTITION
        return None
    if meta.get("error_code"):
        raise KafkaRejected(f"Kafka at {bootstrap}: topic {topic}: error code {meta['error_code']}")
    return meta


def _existing(bootstrap: str, topic: str, timeout_ms: int) -> dict:
    """The topic's metadata; `TopicMissing` when it does not exist."""
    admin = _admin(bootstrap, timeout_ms)
    try:
        meta = _describe(admin, bootstrap, topic)
    finally:
        admin.close()
    if meta is None:
        raise TopicMissing(f"Kafka at {bootstrap}: topic {topic} does not exist")
    return meta


def topic_partitions(bootstrap: str, topic: str, timeout_ms: int = 10_000) -> list[int]:
    """The topic's partition numbers; `TopicMissing` when it does not exist."""
    meta = _existing(bootstrap, topic, timeout_ms)
    return sorted(p["partition_index"] for p in meta["partitions"])


def ensure_topic(bootstrap: str, topic: str, partitions: int, replication_factor: int = 1,
                 timeout_ms: int = 10_000) -> int:
    """Create `topic` with `partitions` partitions when missing; return its
    partition count. An existing topic keeps its own count (Kafka cannot
    shrink one, and growing it would move symbols to other partitions):
    compare the returned count with what you asked for."""
    admin = _admin(bootstrap, timeout_ms)
    try:
        meta = _describe(admin, bootstrap, topic)
        if meta is None:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication_factor)],
                                    timeout_ms=timeout_ms)
            except TopicAlreadyExistsError:
                pass  # created concurrently: report what exists
            except Exception as exc:
                raise _typed(exc, bootstrap, f"creating topic {topic}") from None
            meta = _describe(admin, bootstrap, topic)
            if meta is None:
                raise KafkaRejected(f"Kafka at {bootstrap}: topic {topic} missing right after creation")
        return len(meta["partitions"])
    finally:
        admin.close()


def topic_identity(bootstrap: str, topic: str, timeout_ms: int = 10_000) -> str:
    """The topic's id (KIP-516 UUID, from metadata v10+). It changes whenever
    the topic is deleted and re-created, and on Tansu (memory storage) when
    the broker restarts, because the topic is then created anew: store it
    with recovery state and compare at start."""
    meta = _existing(bootstrap, topic, timeout_ms)
    tid = meta.get("topic_id")
    if tid is None or str(tid) == "00000000-0000-0000-0000-000000000000":
        raise KafkaRejected(f"Kafka at {bootstrap} does not report topic ids (needs metadata v10+)")
    return str(tid)
