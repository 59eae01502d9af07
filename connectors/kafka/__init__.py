"""Kafka: the `bars` topic (encoding, publishing, the Bytewax event-time source)
and the `trade_updates` topic (record format, source); an embedded broker.

Thin over kafka-python (producing, admin) and Bytewax's `KafkaSource`
(librdkafka, consuming; offsets live in Bytewax's recovery store).

Modules
  pure (tested without a broker):
    `codec`        bars topic: encode / decode (`decode_record` never raises), the fast-path msgspec structs
    `columns`      a symbol's part of a fetched batch as columns (`_Group`), `MessageOrigins`
    `publish`      `publish_plan` (which bars before which marker; pure) and `publish_columns` (runs it)
    `trade_topic`  trade_updates topic: record format, encode / decode
    `errors`       the package's errors (no kafka-python import)
  I/O:
    `admin`        `ensure_topic`, `topic_partitions`, `topic_identity`
    `producer`     `BarProducer`
    `partition`    `_BarPartition`: a fetched batch -> Chunk / Watermark items
    `source`       `KafkaBarSource`, its raw partition, the dead-letter writer
    `resume`       `read_resume_point`: the last marker, where `cuts stream` restarts
    `trade_source` `TradeUpdateSource`: the trade_updates topic into the flow
    `embedded`     `EmbeddedKafka`: Tansu on a free loopback port (tests, `make demo`)

Record format of the `bars` topic
  Bar:    key = symbol (utf-8), value = the bar in Alpaca's shape, as JSON:
          {"T":"b","S":"AAPL","t":"2024-01-02T14:30:00Z","o":..,"h":..,"l":..,
           "c":..,"v":..,"n":..,"vw":..}  (n / vw omitted when unknown).
          The key must equal S: it decides the partition, and a symbol's bars
          must all be in one partition to keep their order. A bar whose key is
          not its symbol is undecodable.
  Bars:   key = symbol, value = some of that symbol's bars (in its order) as
          columns, the same fields and values as a bar:
          {"T":"bars","S":"AAPL","t":["2024-01-02T14:30:00Z",..],"o":[..],
           "h":[..],"l":[..],"c":[..],"v":[..],"n":[..],"vw":[..]}
          (n / vw omitted when all unknown, null entries when one is).
          Stored history only (`cuts publish`, `cuts backfill --kafka`): a
          replay decodes it 3-4x faster than one bar per message. A live
          stream writes one bar per message. Each bar is judged on its own
          (late, invalid, duplicate); its origin is `offset#k`.
  Marker: key = None (null), value = {"T":"w","t":"2024-01-02T14:30:00Z"},
          written to EVERY partition (explicit partition number). It means
          "minute t is complete: every later bar in this partition has
          timestamp >= t + 60 s". In code a marker is its watermark: the
          exclusive bound t + 60 (epoch seconds), as `operators.ordering.
          Watermark.ts`. A null key cannot collide with any symbol, keyed
          tooling never groups markers with a symbol, and the partition is
          always explicit, so the key plays no part in routing.

Partitioning
  `BarProducer` uses kafka-python's default partitioner (murmur2 of the key,
  like the Java client). librdkafka's default (`consistent_random`, CRC32)
  hashes differently: any librdkafka producer (confluent-kafka, Bytewax's
  KafkaSink) writing to this topic must set `partitioner=murmur2_random`, or
  a symbol's bars split over two partitions and lose their order.

Late bars and replay
  `KafkaBarSource` flags a bar as `late` when its time is below the
  partition's watermark at the bar's position in the partition (not by wall
  clock), so a replay of the topic drops exactly the bars live dropped.
  A replay (`tail=False`) ends each partition with Watermark(END_OF_TIME) and
  keeps that watermark in its snapshot: resuming a finished replay's recovery
  state treats every newer record as late. A finished replay is final.

Tansu facts relied on (Tansu 0.6.0; see docs/ and shared platform notes)
  - Metadata v10+ reports topic ids (UUIDv7, new for every creation, also
    after a broker restart): `topic_identity` uses them.
  - ListOffsets(latest) is wrong (first offset of the last batch + 1); the
    fetch high watermark is right. Nothing here uses ListOffsets.
  - The broker auto-creates unknown topics (4 partitions) on a metadata
    request that allows it, and kafka-python 3.0.12 producers always allow it
    (their `allow_auto_create_topics=False` is not passed on), as does
    librdkafka's AdminClient.list_topics(topic). So every entry point checks
    the topic with an admin describe (which never creates) first.
"""
