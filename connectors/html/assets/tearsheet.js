'use strict';
// The run tearsheet: every number was computed by ClickHouse SQL; this only draws.
(() => {
  const D = cuts.data;
  const GREEN = '#1a7f37', RED = '#cf222e', BLUE = '#0969da', GREY = '#8c959f';
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const sign = (v) => (v > 0 ? GREEN : RED);

  // Hide nights and weekends when every point lies inside the regular
  // session (times are New York wall clock read as UTC).
  function sessionBreaks(seconds, daily) {
    const breaks = [{bounds: ['sat', 'mon']}];
    if (daily) return breaks;
    for (let i = 0; i < seconds.length; i++) {
      const m = Math.floor((seconds[i] % 86400) / 60);
      if (m < 570 || m >= 960) return breaks;
    }
    breaks.push({bounds: [16, 9.5], pattern: 'hour'});
    return breaks;
  }

  // -- equity and drawdown (one shared time axis)
  const eqSeconds = cuts.col(D.equity.t);
  const eqT = cuts.ms(eqSeconds);
  cuts.plot('fig-equity', [
    {type: 'scatter', mode: 'lines', name: 'equity', x: eqT, y: cuts.col(D.equity.equity),
     line: {color: BLUE, width: 1.5}, hovertemplate: '%{x|%Y-%m-%d %H:%M}<br>%{y:,.2f} $<extra>equity</extra>'},
    {type: 'scatter', mode: 'lines', name: 'drawdown', x: eqT, y: cuts.col(D.equity.drawdown), yaxis: 'y2',
     fill: 'tozeroy', line: {color: RED, width: 1},
     hovertemplate: '%{x|%Y-%m-%d %H:%M}<br>%{y:.2%}<extra>drawdown</extra>'},
  ], {height: 480, showlegend: false,
      xaxis: {type: 'date', anchor: 'y2', rangebreaks: sessionBreaks(eqSeconds, false)},
      yaxis: {domain: [0.36, 1], title: {text: 'equity $'}, tickformat: ',.0f'},
      yaxis2: {domain: [0, 0.3], title: {text: 'drawdown'}, tickformat: '.1%'}});

  // -- daily P&L
  cuts.plot('fig-daily', [{type: 'bar', x: D.daily.date, y: D.daily.pnl, customdata: D.daily.ret,
    marker: {color: D.daily.pnl.map(sign)}, hovertemplate: '%{x}<br>%{y:,.2f} $ (%{customdata:.2%})<extra></extra>'}],
  {height: 320, xaxis: {type: 'date'}, yaxis: {title: {text: '$'}, tickformat: ',.0f'}});

  // -- monthly returns: years x months
  const years = [...new Set(D.monthly.year)].sort((a, b) => a - b);
  const z = years.map(() => new Array(12).fill(null));
  D.monthly.year.forEach((y, i) => { z[years.indexOf(y)][D.monthly.month[i] - 1] = D.monthly.ret[i]; });
  cuts.plot('fig-monthly', [{type: 'heatmap', x: MONTHS, y: years.map(String), z,
    text: z.map((row) => row.map((v) => (v === null ? '' : (v * 100).toFixed(2) + '%'))), texttemplate: '%{text}',
    colorscale: [[0, RED], [0.5, '#f6f8fa'], [1, GREEN]], zmid: 0, showscale: false, xgap: 2, ygap: 2,
    hovertemplate: '%{y} %{x}: %{z:.2%}<extra></extra>'}],
  {height: 140 + 40 * years.length, xaxis: {type: 'category'}, yaxis: {type: 'category', autorange: 'reversed'}});

  // -- distribution of trade returns (bins counted in SQL)
  const H = D.histogram;
  const centers = H.counts.map((_, i) => H.lo + (i + 0.5) * H.width);
  cuts.plot('fig-returns', [{type: 'bar', x: centers, y: H.counts, width: H.width,
    marker: {color: centers.map((c) => (c >= 0 ? GREEN : RED)), line: {color: 'white', width: 0.5}},
    hovertemplate: '%{x:.2%} ± ' + (H.width * 50).toFixed(3) + '%: %{y} trades<extra></extra>'}],
  {height: 320, xaxis: {tickformat: '.1%', title: {text: 'trade return'}}, yaxis: {title: {text: 'trades'}}});

  // -- by strategy, exit reason, symbol
  ['strategy', 'exit_reason', 'symbol'].forEach((name) => {
    const b = D.breakdowns[name];
    cuts.plot('fig-by-' + name, [{type: 'bar', x: b.key, y: b.pnl, customdata: b.trades,
      marker: {color: b.pnl.map(sign)}, hovertemplate: '%{x}<br>%{y:,.2f} $, %{customdata} trades<extra></extra>'}],
    {height: 280, xaxis: {type: 'category'}, yaxis: {title: {text: 'P&L $'}, tickformat: ',.0f'}});
  });

  // -- trades (one object per trade) and the price chart
  const T = D.trades;
  const num = {};
  ['entry_t', 'exit_t', 'qty', 'entry_price', 'exit_price', 'pnl', 'return_pct', 'stop', 'target']
    .forEach((k) => { num[k] = cuts.col(T[k]); });
  const trades = T.symbol.map((symbol, i) => ({
    symbol, strategy: T.strategy[i], exit_reason: T.exit_reason[i], qty: num.qty[i],
    entry_t: num.entry_t[i], entry_price: num.entry_price[i], exit_t: num.exit_t[i], exit_price: num.exit_price[i],
    minutes: (num.exit_t[i] - num.entry_t[i]) / 60, pnl: num.pnl[i], return_pct: num.return_pct[i],
    stop: num.stop[i], target: num.target[i]}));
  const bySymbol = {};
  trades.forEach((t) => { (bySymbol[t.symbol] = bySymbol[t.symbol] || []).push(t); });

  const daily = Number(document.getElementById('candle-note').dataset.minutes) === 390;
  const decoded = {};
  function candleData(sym) {
    if (!decoded[sym]) {
      const c = D.candles[sym];
      const t = cuts.col(c.t);
      decoded[sym] = {seconds: t, x: cuts.ms(t), open: cuts.col(c.open), high: cuts.col(c.high),
                      low: cuts.col(c.low), close: cuts.col(c.close)};
    }
    return decoded[sym];
  }
  function segments(list, key) {
    const x = [], y = [];
    list.forEach((t) => { x.push(t.entry_t * 1000, t.exit_t * 1000, null); y.push(t[key], t[key], null); });
    return {x, y};
  }
  function candleTraces(sym) {
    const c = candleData(sym), list = bySymbol[sym] || [];
    const stop = segments(list, 'stop'), target = segments(list, 'target');
    return [
      {type: 'candlestick', name: sym, x: c.x, open: c.open, high: c.high, low: c.low, close: c.close,
       increasing: {line: {color: GREEN, width: 1}}, decreasing: {line: {color: RED, width: 1}}},
      {type: 'scatter', mode: 'markers', name: 'entry', x: list.map((t) => t.entry_t * 1000),
       y: list.map((t) => t.entry_price), text: list.map((t) => t.strategy),
       marker: {symbol: 'triangle-up', size: 11, color: BLUE, line: {color: 'white', width: 1}},
       hovertemplate: 'entry %{x|%Y-%m-%d %H:%M}<br>%{y:.4f}<br>%{text}<extra></extra>'},
      {type: 'scatter', mode: 'markers', name: 'exit', x: list.map((t) => t.exit_t * 1000),
       y: list.map((t) => t.exit_price), text: list.map((t) => t.exit_reason + ', ' + cuts.fmt(t.pnl, '$') + ' $'),
       marker: {symbol: 'x', size: 10, color: list.map((t) => sign(t.pnl)), line: {color: 'white', width: 1}},
       hovertemplate: 'exit %{x|%Y-%m-%d %H:%M}<br>%{y:.4f}<br>%{text}<extra></extra>'},
      {type: 'scatter', mode: 'lines', name: 'stop', x: stop.x, y: stop.y, hoverinfo: 'skip',
       line: {color: RED, width: 1, dash: 'dot'}},
      {type: 'scatter', mode: 'lines', name: 'target', x: target.x, y: target.y, hoverinfo: 'skip',
       line: {color: GREEN, width: 1, dash: 'dot'}},
    ];
  }
  function candleLayout(sym, range) {
    const c = candleData(sym);
    const xaxis = {type: 'date', rangeslider: {visible: false}, rangebreaks: sessionBreaks(c.seconds, daily)};
    if (range) xaxis.range = range; else xaxis.autorange = true;
    return {height: 560, showlegend: true, legend: {orientation: 'h', y: 1.06}, xaxis,
            yaxis: {title: {text: 'price'}, autorange: true}};
  }

  const pick = document.getElementById('symbol');
  const fig = document.getElementById('fig-candles');
  const symbols = Object.keys(D.candles).sort();
  symbols.forEach((s) => pick.add(new Option(s + ' (' + (bySymbol[s] || []).length + ' trades)', s)));
  if (symbols.length) {
    // start on the symbol with the most trades
    pick.value = symbols.reduce((a, s) => ((bySymbol[s] || []).length > (bySymbol[a] || []).length ? s : a));
    const first = pick.value;
    const p = cuts.plot('fig-candles', candleTraces(first), candleLayout(first));
    p.then(() => { fig.dataset.symbol = first; });
  } else {
    fig.textContent = 'No bars in this run.';
  }
  function show(sym, range) {
    delete fig.dataset.symbol;
    return cuts.react('fig-candles', candleTraces(sym), candleLayout(sym, range))
      .then(() => { fig.dataset.symbol = sym; });
  }
  pick.addEventListener('change', () => show(pick.value));

  // first index whose time is >= t (times ascending)
  function at(seconds, t) {
    let lo = 0, hi = seconds.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (seconds[mid] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }
  const PAD = 30;  // candles shown before the entry and after the exit
  function zoomTo(t) {
    const c = candleData(t.symbol), last = c.x.length - 1;
    const a = Math.max(0, at(c.seconds, t.entry_t) - PAD), b = Math.min(last, at(c.seconds, t.exit_t) + PAD);
    const range = [c.x[a], c.x[Math.max(a, b)]];
    pick.value = t.symbol;
    show(t.symbol, range).then(() => fig.scrollIntoView({behavior: 'smooth', block: 'center'}));
  }

  cuts.sortableTable(document.getElementById('trades'), [
    {key: 'symbol', label: 'symbol', kind: 'text'}, {key: 'strategy', label: 'strategy', kind: 'text'},
    {key: 'qty', label: 'qty', kind: 'i'}, {key: 'entry_t', label: 'entry', kind: 'time'},
    {key: 'entry_price', label: 'entry price', kind: 'price'}, {key: 'exit_t', label: 'exit', kind: 'time'},
    {key: 'exit_price', label: 'exit price', kind: 'price'}, {key: 'exit_reason', label: 'exit reason', kind: 'text'},
    {key: 'minutes', label: 'minutes', kind: 'i'}, {key: 'pnl', label: 'P&L $', kind: '$'},
    {key: 'return_pct', label: 'return', kind: '%', signed: true},
    {key: 'stop', label: 'stop', kind: 'price'}, {key: 'target', label: 'target', kind: 'price'},
  ], trades, zoomTo);

  // -- live versus backtest
  const C = D.comparison;
  if (C) {
    const idx = C.matched.map((_, i) => i + 1);
    const label = C.matched.map((m) => m.symbol + ' ' + m.strategy_id + ' ' + m.entry_time + ' UTC');
    cuts.plot('fig-compare-slippage', [
      {type: 'scatter', mode: 'markers', name: 'entry slippage', x: idx, y: C.matched.map((m) => m.entry_slippage_bps),
       text: label, marker: {color: BLUE, size: 7}, hovertemplate: '%{text}<br>entry %{y:.2f} bps<extra></extra>'},
      {type: 'scatter', mode: 'markers', name: 'exit slippage', x: idx, y: C.matched.map((m) => m.exit_slippage_bps),
       text: label, marker: {color: RED, size: 7, symbol: 'x'}, hovertemplate: '%{text}<br>exit %{y:.2f} bps<extra></extra>'},
    ], {height: 320, xaxis: {title: {text: 'matched trade (by entry time)'}},
        yaxis: {title: {text: 'slippage bps (positive = worse)'}}});
    cuts.plot('fig-compare-trades', [{type: 'bar', x: ['matched', 'missed (backtest only)', 'extra (live only)'],
      y: [C.matched.length, C.missed.length, C.extra.length], marker: {color: [GREY, RED, BLUE]},
      hovertemplate: '%{x}: %{y}<extra></extra>'}], {height: 280, yaxis: {title: {text: 'trades'}}});
  }

  cuts.done();
})();
