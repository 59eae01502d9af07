"""Alpaca through alpaca-py: market data in, orders out, the broker's truth back.

Pure mapping (no I/O, tested on recorded payloads):
  `bars`           parse_bar (stream message, REST dict or alpaca-py Bar -> Bar), symbols,
                   time arguments, request windows, backoff
  `minutes`        the rules of `cuts stream`: when a minute is complete, what to backfill,
                   where a restart resumes, staleness, subscription batches
  `calendar`       `sessions_from_calendar` (and `fetch_sessions`, its I/O)
  `broker`         orders -> alpaca-py requests (`to_order_request`, OCO protection,
                   deterministic client_order_id), plus `AlpacaBroker`, its submitting half
  `trade_updates`  Alpaca trade updates / order lists -> `TradeUpdate`s of our orders
  `order_history`  the order history's rows (`OrderEvent`: one per state change) and
                   trade updates -> rows
  `reconcile`      the broker's positions and orders against a run's, one status per symbol
  `errors`         the one-line errors of these connectors (no alpaca-py import)

I/O:
  `stream`         the market-data websocket (`BarStream`, alpaca-py's StockDataStream)
  `live`           the loop of `cuts stream`: stream -> Kafka, backfill, markers
  `history`        REST history (`cuts backfill`, the stream's gap filler) and its sinks
  `broker_sink`    the dataflow's orders -> Alpaca (idempotent by client_order_id)
  `trade_stream`   alpaca-py's TradingStream as the relay needs it
  `trade_relay`    trade updates -> the `trade_updates` topic, with broker-clock markers
  `account`        positions, open orders and flattening a symbol (reconciliation)
"""
