"""Thin connectors over the official clients: Alpaca, Kafka, ClickHouse, files."""
