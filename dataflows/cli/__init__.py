"""`cuts`, the command line: parses arguments and composes the flows
(`dataflows.backtest`, `dataflows.trading`) and connectors. Nothing outside
this package imports it.

  `main`              the parser and `main()` (the `cuts` entry point), errors -> one line, exit 2
  `args`              argument types and the parser class
  `commands`          backtest, run, publish, halt / resume, report, generate, demo
  `live_commands`     stream, backfill (Alpaca market data)
  `reconcile_command` reconcile (the broker's account against a run)
"""
