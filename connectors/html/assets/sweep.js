'use strict';
// The sweep page: every number was computed by ClickHouse SQL; this only draws.
(() => {
  const D = cuts.data;
  const C = D.configs;
  const BLUE = '#0969da', GREY = '#8c959f';
  const SCALE = [[0, '#cf222e'], [0.5, '#f6f8fa'], [1, '#1a7f37']];  // red = worst, green = best
  // one point per trading day: a category axis (a date axis put several ticks, repeated, on a day of a short sweep)
  const DAYS = {type: 'category', nticks: 12, tickangle: 0};
  const n = C.config_id.length;
  const BEST = 0;  // configurations arrive best first
  const RANKING_ROWS = 1000;  // laid out at first; the rest behind a button
  const label = (v) => { const x = JSON.parse(v); return typeof x === 'string' ? x : JSON.stringify(x); };
  function sortedValues(list) {
    const uniq = [...new Set(list)];
    if (uniq.every((v) => typeof JSON.parse(v) === 'number')) return uniq.sort((a, b) => JSON.parse(a) - JSON.parse(b));
    return uniq.sort();
  }

  // -- the objective (or another metric) over two axes, the others at the best's values
  const pickX = document.getElementById('axis-x'), pickY = document.getElementById('axis-y');
  const pickM = document.getElementById('metric');
  D.axes.forEach((a) => { pickX.add(new Option(a, a)); pickY.add(new Option(a, a)); });
  pickY.add(new Option('(none)', ''));
  pickX.value = D.axes[0] || '';
  pickY.value = D.axes.length > 1 ? D.axes[1] : '';
  const metrics = [{key: 'objective', label: D.objective.label + ' (objective)', kind: D.objective.kind}]
    .concat(D.metrics.filter((m) => m.key !== D.objective.key));
  metrics.forEach((m) => pickM.add(new Option(m.label, m.key)));

  function heatmapFigure() {
    const xa = pickX.value, ya = pickY.value === xa ? '' : pickY.value;
    const m = metrics.find((k) => k.key === pickM.value);
    const fixed = D.axes.filter((a) => a !== xa && a !== ya);
    const rows = [];
    for (let i = 0; i < n; i++) {
      if (fixed.every((a) => C.values[a][i] === C.values[a][BEST])) rows.push(i);
    }
    const xs = sortedValues(rows.map((i) => C.values[xa][i]));
    const ys = ya ? sortedValues(rows.map((i) => C.values[ya][i])) : [null];
    const z = ys.map(() => xs.map(() => null)), text = ys.map(() => xs.map(() => ''));
    rows.forEach((i) => {
      const r = ya ? ys.indexOf(C.values[ya][i]) : 0, c = xs.indexOf(C.values[xa][i]);
      z[r][c] = C[m.key][i];
      text[r][c] = C.config_id[i] + ' #' + C.rank[i] + '<br>' + cuts.fmt(C[m.key][i], m.kind);
    });
    const note = fixed.length
      ? 'Other axes at the best configuration\'s values: ' + fixed.map((a) => a + ' = ' + label(C.values[a][BEST])).join(', ') + '.'
      : 'Every configuration is shown.';
    document.getElementById('heatmap-note').textContent = note + ' The outlined cell is the best configuration, ' +
      C.config_id[BEST] + '; an empty cell has no defined value.';
    const traces = [
      {type: 'heatmap', x: xs.map(label), y: ys.map((v) => (v === null ? '' : label(v))), z, text,
       texttemplate: '%{text}', hovertemplate: xa + ' = %{x}' + (ya ? '<br>' + ya + ' = %{y}' : '') + '<br>%{text}<extra></extra>',
       colorscale: SCALE, reversescale: m.key === 'max_drawdown', xgap: 2, ygap: 2, colorbar: {title: {text: m.label}}},
    ];
    // the best configuration's cell, outlined (category axes place cell i at i)
    const bx = xs.indexOf(C.values[xa][BEST]), by = ya ? ys.indexOf(C.values[ya][BEST]) : 0;
    const layout = {height: Math.max(320, 140 + 56 * ys.length), xaxis: {type: 'category', title: {text: xa}},
                    yaxis: {type: 'category', title: {text: ya}},
                    shapes: [{type: 'rect', xref: 'x', yref: 'y', x0: bx - 0.5, x1: bx + 0.5, y0: by - 0.5, y1: by + 0.5,
                              line: {color: '#1f2328', width: 4}}]};
    return {traces, layout, key: xa + '|' + ya + '|' + m.key, cells: rows.length};
  }
  const heat = document.getElementById('fig-heatmap');
  function shown(f) { heat.dataset.view = f.key; heat.dataset.cells = String(f.cells); }
  if (n && D.axes.length) {
    const f = heatmapFigure();
    cuts.plot('fig-heatmap', f.traces, f.layout).then(() => shown(f));
    [pickX, pickY, pickM].forEach((p) => p.addEventListener('change', () => {
      const g = heatmapFigure();
      delete heat.dataset.view;
      cuts.react('fig-heatmap', g.traces, g.layout).then(() => shown(g));
    }));
  } else {
    heat.textContent = 'No configurations.';
  }

  // -- equity of the top configurations
  const top = C.config_id.filter((cid) => D.curves[cid]);
  cuts.plot('fig-curves', top.map((cid, k) => ({
    type: 'scatter', mode: 'lines', name: cid + ' #' + C.rank[C.config_id.indexOf(cid)], x: D.curves[cid].day,
    y: cuts.col(D.curves[cid].equity), line: {width: k === 0 ? 3 : 1.5},
    hovertemplate: cid + ' %{x}<br>%{y:,.2f} $<extra></extra>'})),
  {height: 420, xaxis: DAYS, yaxis: {title: {text: 'equity $'}, tickformat: ',.0f'},
   legend: {orientation: 'v'}});

  // -- walk-forward
  const O = D.oos;
  if (D.folds.length) {
    cuts.plot('fig-oos', [
      {type: 'scatter', mode: 'lines+markers', name: 'walk-forward (out of sample)', x: O.day, y: O.equity,
       text: O.config_id, line: {color: BLUE, width: 2.5},
       hovertemplate: '%{x}: %{y:,.2f} $ (%{text})<extra>out of sample</extra>'},
      {type: 'scatter', mode: 'lines', name: 'in-sample best ' + (D.best || ''), x: O.day, y: O.in_sample_equity,
       line: {color: GREY, width: 2, dash: 'dash'}, hovertemplate: '%{x}: %{y:,.2f} $<extra>in-sample best</extra>'},
    ], {height: 360, xaxis: DAYS, yaxis: {title: {text: 'equity $'}, tickformat: ',.0f'},
        legend: {orientation: 'h', y: 1.12}});
    const F = D.folds;
    cuts.plot('fig-chosen', [{type: 'scatter', mode: 'markers+text', x: F.map((f) => 'fold ' + f.fold),
      y: F.map((f) => f.config_id), text: F.map((f) => cuts.fmt(f.test_return, '%')), textposition: 'top center',
      marker: {size: 14, color: F.map((f) => (f.test_return > 0 ? '#1a7f37' : '#cf222e'))},
      customdata: F.map((f) => f.test_start + ' to ' + f.test_end),
      hovertemplate: '%{x} (test %{customdata})<br>chosen %{y}, test return %{text}<extra></extra>'}],
    {height: 300, title: {text: 'Configuration chosen in each fold (label: its test return)'},
     xaxis: {type: 'category'}, yaxis: {type: 'category', categoryorder: 'category ascending'}});
  }

  // -- ranking table
  const rows = C.config_id.map((cid, i) => {
    const r = {rank: C.rank[i], config_id: cid, objective: C.objective[i]};
    D.axes.forEach((a) => { r['axis:' + a] = JSON.parse(C.values[a][i]); });
    D.metrics.forEach((m) => { r[m.key] = C[m.key][i]; });
    return r;
  });
  cuts.sortableTable(document.getElementById('ranking'), [
    {key: 'rank', label: '#', kind: 'i'}, {key: 'config_id', label: 'config', kind: 'text'},
    ...D.axes.map((a) => ({key: 'axis:' + a, label: a, kind: 'text'})),
    {key: 'objective', label: D.objective.label, kind: D.objective.kind},
    ...D.metrics.filter((m) => m.key !== D.objective.key).map((m) => ({key: m.key, label: m.label, kind: m.kind})),
  ], rows, undefined, RANKING_ROWS);

  cuts.done();
})();
