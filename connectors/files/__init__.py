"""Bar files and the synthetic market.

  `barfile`    Parquet / CSV files with Alpaca's bar columns: `read_bar_file`
               and `plan_emission` (pure mapping) and `BarFileSource`, the
               Bytewax event-time source over a file's columns
  `synthetic`  seeded synthetic minute bars (`cuts generate`): no I/O but
               writing the file
"""
