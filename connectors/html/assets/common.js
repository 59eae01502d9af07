'use strict';
// Shared by the report pages: the data block, typed-array columns, plotting
// with a readiness flag (body[data-ready="1"] once every chart is drawn;
// "error" when one failed), number formats and sortable tables.
const cuts = (() => {
  const TYPES = {f4: Float32Array, f8: Float64Array, u4: Uint32Array, i4: Int32Array};
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const pending = [];
  const config = {responsive: true, displaylogo: false};

  // A column: a plain array, or {dtype, b64} little-endian typed array.
  function col(c) {
    if (c === null || c === undefined) return [];
    if (Array.isArray(c)) return c;
    const s = atob(c.b64);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return new TYPES[c.dtype](bytes.buffer);
  }

  // Epoch seconds (New York wall clock) -> milliseconds for date axes.
  function ms(seconds) {
    const out = new Float64Array(seconds.length);
    for (let i = 0; i < seconds.length; i++) out[i] = seconds[i] * 1000;
    return out;
  }

  function layout(extra) {
    return Object.assign({margin: {l: 60, r: 20, t: 30, b: 40}, hovermode: 'closest',
                          font: {family: 'system-ui, sans-serif', size: 12}}, extra);
  }

  function plot(id, traces, extra) {
    const el = document.getElementById(id);
    if (!el) return null;
    const p = Plotly.newPlot(el, traces, layout(extra), config);
    pending.push(p);
    return p;
  }

  function react(id, traces, extra) {
    return Plotly.react(document.getElementById(id), traces, layout(extra), config);
  }

  function done() {
    Promise.all(pending).then(
      () => { document.body.dataset.ready = '1'; },
      (err) => { document.body.dataset.ready = 'error'; console.error('chart failed', err); });
  }

  // one formatter each: toLocaleString builds a new one per call, seconds over a table of 10,000 rows
  const MONEY = new Intl.NumberFormat('en-US', {minimumFractionDigits: 2, maximumFractionDigits: 2});
  const INT = new Intl.NumberFormat('en-US', {maximumFractionDigits: 0});
  const NUM = new Intl.NumberFormat('en-US', {maximumFractionDigits: 4});
  function fmt(v, kind) {
    if (v === null || v === undefined || Number.isNaN(v)) return '-';
    if (kind === '%') return (v * 100).toFixed(2) + '%';
    if (kind === '$') return MONEY.format(v);
    if (kind === 'i') return INT.format(Math.round(v));
    if (kind === 'time') return new Date(v * 1000).toISOString().slice(0, 16).replace('T', ' ');
    if (kind === 'price') return v.toFixed(v >= 1000 ? 2 : 4);
    if (typeof v === 'number') return NUM.format(v);
    return String(v);
  }

  // A table sorted by a click on its header: columns [{key, label, kind}],
  // rows as objects. onRow(row) is called when a row is clicked. With `limit`,
  // only the first `limit` rows of the current order are laid out (the layout
  // of 10,000 rows took seconds) and a button below shows them all.
  function sortableTable(table, columns, rows, onRow, limit) {
    let key = null, asc = true, shown = limit && rows.length > limit ? limit : rows.length;
    const thead = table.querySelector('thead'), tbody = table.querySelector('tbody');
    const tr = document.createElement('tr');
    columns.forEach((c) => {
      const th = document.createElement('th');
      th.textContent = c.label;
      th.dataset.key = c.key;
      th.addEventListener('click', () => {
        asc = key === c.key ? !asc : true;
        key = c.key;
        thead.querySelectorAll('th').forEach((h) => { h.dataset.sort = h.dataset.key === key ? (asc ? 'asc' : 'desc') : ''; });
        draw();
      });
      tr.appendChild(th);
    });
    thead.replaceChildren(tr);
    function draw() {
      const sorted = rows.slice();
      if (key !== null) {
        const sign = asc ? 1 : -1;
        sorted.sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) * sign);
      }
      const frag = document.createDocumentFragment();
      sorted.slice(0, shown).forEach((r) => {
        const row = document.createElement('tr');
        columns.forEach((c) => {
          const td = document.createElement('td');
          td.textContent = fmt(r[c.key], c.kind);
          if (c.kind !== undefined && c.kind !== 'text') td.className = 'num';
          if (c.key === 'pnl' || c.signed) td.classList.add(r[c.key] > 0 ? 'pos' : 'neg');
          row.appendChild(td);
        });
        if (onRow) row.addEventListener('click', () => onRow(r));
        frag.appendChild(row);
      });
      tbody.replaceChildren(frag);
    }
    if (shown < rows.length) {
      const more = document.createElement('p'), button = document.createElement('button');
      more.className = 'note';
      more.dataset.table = table.id;
      more.textContent = 'The first ' + shown.toLocaleString('en-US') + ' of ' + rows.length.toLocaleString('en-US') +
        ' rows in the order chosen (click a column to sort). ';
      button.textContent = 'Show all';
      button.addEventListener('click', () => { shown = rows.length; more.remove(); draw(); });
      more.appendChild(button);
      (table.closest('.scroll') || table).after(more);
    }
    draw();
  }

  return {data, col, ms, plot, react, done, fmt, sortableTable};
})();
