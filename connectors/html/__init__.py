"""Report pages: self-contained HTML files a browser opens with no network
(plotly.js and the data inlined), drawn from what the ClickHouse queries of
`connectors.clickhouse` returned. No SQL here and no number computed: the
pages only lay out and draw.

Pure (data in, HTML text out; reads only its own assets and plotly.js from
the plotly wheel):
  `page`       the page shell: inlined plotly.js, styles and scripts, the data
               as JSON with numeric columns as base64 typed arrays
  `tearsheet`  a run's tearsheet (`cuts report --html`)
  `sweep_page` a sweep's page (`cuts report --sweep ID --html`, `cuts sweep --html`)

The pages' scripts and styles are in `assets/`.
"""
