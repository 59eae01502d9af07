"""Bar files and the synthetic market.

  `barfile`    Parquet / CSV files with Alpaca's bar columns: `read_bar_file`,
               `read_chunks` and `plan_emission` (pure mapping) and
               `BarFileSource`, the Bytewax event-time source over a file,
               in memory up to a constant number of bars
  `spill`      a larger file put in the same emission order on disk
               (temporary files: I/O), merged back per partition
  `rows`       the rows a file partition emits (pure)
  `synthetic`  seeded synthetic minute bars (`cuts generate`): no I/O but
               writing the file
"""
