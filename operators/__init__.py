"""Pure trading logic and domain types: no Bytewax, Kafka, ClickHouse or wall clock."""
