"""Bar files and the synthetic market.

  `reading`    Parquet / CSV files with Alpaca's bar columns -> columns:
               `read_bar_file`, `read_chunks` (mapping; reads the file)
  `barfile`    `plan_emission` (pure) and `BarFileSource`, the Bytewax
               event-time source over a file, in memory up to a constant
               number of bars
  `spill`      a larger file put in the same emission order on disk
               (temporary files: I/O), merged back per partition
  `rows`       the rows a file partition emits (pure)
  `synthetic`  seeded synthetic minute bars (`cuts generate`): no I/O but
               writing the file
"""
