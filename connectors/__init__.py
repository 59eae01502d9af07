"""Connectors: one package per outside system, thin over its official client.

  `alpaca`      Alpaca: market data (stream, history, calendar) and trading
                (broker orders, trade updates, the account) through alpaca-py
  `kafka`       Kafka: the `bars` and `trade_updates` topics through kafka-python
                and Bytewax's KafkaSource; the embedded Tansu broker
  `clickhouse`  ClickHouse through clickhouse-connect (chDB or a server):
                tables, writes, the dataflow's sink, reports in SQL
  `files`       bar files (Parquet / CSV) as a source; the synthetic market
  `config`      the trading configuration file and the environment (the only
                module that reads environment variables)

Each package's docstring says which of its modules are pure mapping (tested
on recorded payloads, no I/O) and which do I/O. Connectors depend on
`operators` (the domain types) and on each other only downwards
(alpaca -> kafka, clickhouse -> alpaca's pure reconciliation rules); never
on `dataflows`.
"""
