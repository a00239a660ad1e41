"use strict";
// kiln report: reads the embedded JSON and draws on canvases. Strings only ever go through
// textContent, never parsed as HTML.
(function () {
  const data = JSON.parse(document.getElementById("kiln-data").textContent);
  const palette = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"];

  function text(el, s) { el.textContent = s == null ? "" : String(s); }
  function row(table, cells, numeric) {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = document.createElement(i === 0 ? "th" : "td");
      if (numeric && i > 0) td.className = "num";
      text(td, c);
      tr.appendChild(td);
    });
    table.appendChild(tr);
  }
  function fmt(v) {
    if (typeof v !== "number") return v == null ? "—" : String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toFixed(4);
  }

  // Line chart of several series [{name, points: [[x, y]]}].
  function lines(canvas, series, opts) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, L = 56, R = 10, T = 10, B = 28;
    const pts = series.flatMap(s => s.points).filter(p => isFinite(p[1]));
    ctx.clearRect(0, 0, W, H);
    if (!pts.length) { ctx.fillText("no data", L, T + 20); return; }
    let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
    let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
    if (opts && opts.y01) { y0 = Math.min(0, y0); y1 = Math.max(1, y1); }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
    ctx.strokeStyle = "#c5ccd8"; ctx.fillStyle = "#5b6475"; ctx.font = "11px sans-serif";
    ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4;
      ctx.fillText(fmt(y), 2, sy(y) + 4);
      const x = x0 + (x1 - x0) * i / 4;
      ctx.fillText(String(Math.round(x)), sx(x) - 8, H - 10);
    }
    series.forEach((s, k) => {
      ctx.strokeStyle = palette[k % palette.length]; ctx.lineWidth = 1.5; ctx.beginPath();
      s.points.forEach((p, i) => { if (i) ctx.lineTo(sx(p[0]), sy(p[1])); else ctx.moveTo(sx(p[0]), sy(p[1])); });
      ctx.stroke();
      if (s.points.length < 60) s.points.forEach(p => { ctx.fillStyle = palette[k % palette.length]; ctx.fillRect(sx(p[0]) - 2, sy(p[1]) - 2, 4, 4); });
    });
  }

  text(document.getElementById("run"), data.run);
  const summary = document.getElementById("summary");
  const r = data.results || {};
  const cfg = (data.config && data.config.train) || {};
  row(summary, ["task", (data.config && data.config.task) || r.task]);
  row(summary, ["strategy", r.strategy || "full"]);
  if (cfg.attention) row(summary, ["attention", cfg.attention.kind]);
  row(summary, ["steps", r.steps]);
  row(summary, ["wall time (s)", fmt(r.wall_time_s)]);
  row(summary, ["train seq/s", fmt(r.train_seq_per_s)]);
  row(summary, ["peak RSS (MiB)", fmt(r.peak_rss_mb)]);
  if (r.final_metrics) Object.entries(r.final_metrics.values).forEach(([k, v]) => row(summary, ["dev " + k, fmt(v)]));
  if (r.best) row(summary, ["best " + (r.final_metrics ? r.final_metrics.primary : ""), fmt(r.best[0]) + " at step " + r.best[1]]);

  const tr = data.train || [];
  lines(document.getElementById("loss"), [{ name: "loss", points: tr.map(v => [v.step, v.loss]) }]);
  lines(document.getElementById("lr"), [{ name: "lr", points: tr.map(v => [v.step, v.lr]) }]);
  lines(document.getElementById("gnorm"), [{ name: "grad norm", points: tr.map(v => [v.step, v.grad_norm]) }]);
  const ev = data.eval || [];
  const names = [...new Set(ev.flatMap(v => Object.keys(v.metrics || {})))];
  lines(document.getElementById("dev"), names.map(n => ({ name: n, points: ev.map(v => [v.step, v.metrics[n]]) })), { y01: true });
  const legend = document.getElementById("dev-legend");
  names.forEach((n, k) => { const s = document.createElement("span"); s.style.color = palette[k % palette.length]; text(s, "■ " + n); legend.appendChild(s); });

  if ((data.transfer || []).length) {
    document.getElementById("transfer-section").hidden = false;
    lines(document.getElementById("transfer"), [{ name: "transfer", points: data.transfer.map(v => [v.step, v.loss]) }]);
  }

  const dyn = data.dynamics || [];
  if (dyn.length) {
    document.getElementById("datamap-section").hidden = false;
    const n = dyn[0].p_gold.length, E = dyn.length;
    const points = [];
    for (let i = 0; i < n; i++) {
      let m = 0, c = 0;
      for (const d of dyn) { m += d.p_gold[i]; c += d.correct[i] ? 1 : 0; }
      m /= E;
      let v = 0;
      for (const d of dyn) v += (d.p_gold[i] - m) ** 2;
      points.push({ i, conf: m, vari: Math.sqrt(v / E), corr: c / E });
    }
    const canvas = document.getElementById("datamap"), ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, L = 50, B = 36, T = 10, R = 10;
    const vmax = Math.max(0.5, ...points.map(p => p.vari));
    const sx = v => L + v / vmax * (W - L - R), sy = c => H - B - c * (H - T - B);
    ctx.strokeStyle = "#c5ccd8"; ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
    ctx.fillStyle = "#5b6475"; ctx.font = "11px sans-serif";
    ctx.fillText("variability →", W - 90, H - 8); ctx.fillText("confidence", 2, T + 10);
    for (const p of points) {
      const hue = 10 + 110 * p.corr;
      ctx.fillStyle = "hsla(" + hue + ",70%,45%,0.6)";
      ctx.fillRect(sx(p.vari) - 2, sy(p.conf) - 2, 4, 4);
    }
    const hover = document.getElementById("datamap-hover");
    canvas.addEventListener("mousemove", e => {
      const b = canvas.getBoundingClientRect(), x = e.clientX - b.left, y = e.clientY - b.top;
      let best = null, bd = 64;
      for (const p of points) { const d = (sx(p.vari) - x) ** 2 + (sy(p.conf) - y) ** 2; if (d < bd) { bd = d; best = p; } }
      if (!best) { text(hover, ""); return; }
      const t = data.texts && data.texts[best.i] != null ? data.texts[best.i] : "example " + best.i;
      text(hover, "#" + best.i + "  confidence " + best.conf.toFixed(3) + "  variability " + best.vari.toFixed(3) + "  correct " + best.corr.toFixed(2) + "\n" + t);
    });
  }

  if (data.trainable) {
    document.getElementById("trainable-section").hidden = false;
    const t = document.getElementById("trainable");
    row(t, ["module", "trainable", "total"]);
    (data.trainable.per_module || []).forEach(m => row(t, m, true));
    row(t, ["all (" + fmt(data.trainable.percent) + " %)", data.trainable.trainable, data.trainable.total], true);
  }
})();
