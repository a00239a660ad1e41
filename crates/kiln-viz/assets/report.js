"use strict";
// kiln report: reads the embedded JSON and draws on canvases. Strings only ever go through
// textContent, never parsed as HTML.
(function () {
  const data = JSON.parse(document.getElementById("kiln-data").textContent);
  const palette = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"];

  function text(el, s) { el.textContent = s == null ? "" : String(s); }
  // The URL fragment's state (`#filter=wrong&select=1,2`), shared with analysis.js.
  window.kilnParams = function () {
    const out = {};
    location.hash.replace(/^#/, "").split("&").filter(Boolean).forEach(kv => {
      const [k, v] = kv.split("="); out[decodeURIComponent(k)] = decodeURIComponent(v || "");
    });
    return out;
  };
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
  // A number as a person writes it: 4 significant digits, no trailing zeros (20.97, 0.5,
  // 646, 2.000e-5).
  function fmt(v) {
    if (typeof v !== "number") return v == null ? "—" : String(v);
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (!isFinite(v)) return String(v);
    if (a < 1e-3 || a >= 1e6) return v.toExponential(3).replace(/\.?0+e/, "e");
    const digits = Math.min(6, Math.max(0, 3 - Math.floor(Math.log10(a))));
    return v.toFixed(digits).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  }
  window.kilnFmt = fmt;
  function seconds(s) {
    if (typeof s !== "number") return "—";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(Math.round(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.round((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  // About `n` round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi]; `integer` keeps
  // them whole (steps). A degenerate range gives its one value.
  function ticks(lo, hi, n, integer) {
    if (!(hi > lo)) return [lo];
    let step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    for (const m of [1, 2, 5, 10]) { if ((hi - lo) / (step * m) <= n) { step *= m; break; } }
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }
  window.kilnTicks = ticks;

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
    // One step (a single evaluation): the point sits in the middle of a one-tick axis.
    const xTicks = ticks(x0, x1, 5, true);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 0.5; y1 += d; y0 -= d; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
    ctx.strokeStyle = "#c5ccd8"; ctx.fillStyle = "#5b6475"; ctx.font = "11px sans-serif";
    ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
    ctx.textAlign = "right";
    ticks(y0, y1, 4, false).forEach(y => ctx.fillText(fmt(y), L - 4, sy(y) + 4));
    ctx.textAlign = "center";
    xTicks.forEach(x => ctx.fillText(String(x), Math.min(sx(x), W - R - 8), H - 10));
    ctx.textAlign = "left";
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
  const att = r.attention; // results.json's AttentionSummary (kiln-format), absent if not converted
  const prov = (data.config && data.config.provenance) || null;
  row(summary, ["task", (data.config && data.config.task) || r.task]);
  row(summary, ["strategy", r.strategy || "full"]);
  if (att) row(summary, ["attention", att.kind]);
  if (prov) {
    row(summary, ["model", (prov.model.id || prov.model.path) + " (sha256 " + prov.model.sha256.slice(0, 12) + "…)"]);
    row(summary, ["kiln", prov.kiln_version + (prov.git_commit ? " @ " + prov.git_commit.slice(0, 10) : "") + ", " + prov.backend]);
  }
  row(summary, ["steps", r.steps]);
  row(summary, ["wall time", seconds(r.wall_time_s)]);
  row(summary, ["train seq/s", typeof r.train_seq_per_s === "number" ? r.train_seq_per_s.toFixed(1) : "—"]);
  row(summary, ["peak RSS", typeof r.peak_rss_mb === "number" ? Math.round(r.peak_rss_mb) + " MiB" : "—"]);
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
  if (dyn.length === 1) {
    // Variability is the spread of p(gold) over epochs: with one epoch every point would sit
    // on the confidence axis.
    document.getElementById("datamap-section").hidden = false;
    const canvas = document.getElementById("datamap");
    canvas.hidden = true;
    const note = document.createElement("p");
    note.id = "datamap-note";
    text(note, "The data map needs training dynamics from at least 2 epochs (variability is the spread of p(gold) across epochs); this run recorded 1. Train for 2 or more epochs with data_map = true.");
    canvas.parentNode.insertBefore(note, canvas);
  } else if (dyn.length) {
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
    const fromScreen = (x, y) => [(x - L) / (W - L - R) * vmax, (H - B - y) / (H - T - B)];
    // Box selection in data coordinates: {v0, v1, c0, c1} (variability and confidence ranges).
    let box = null, drag = null;
    const inBox = p => box && p.vari >= box.v0 && p.vari <= box.v1 && p.conf >= box.c0 && p.conf <= box.c1;
    const textOf = i => data.texts && data.texts[i] != null ? data.texts[i] : "example " + i;
    let sortKey = "conf", sortDir = 1;
    function drawMap() {
      ctx.clearRect(0, 0, W, H);
      ctx.strokeStyle = "#c5ccd8"; ctx.beginPath(); ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B); ctx.stroke();
      ctx.fillStyle = "#5b6475"; ctx.font = "11px sans-serif";
      ctx.fillText("variability →", W - 90, H - 8); ctx.fillText("confidence", 2, T + 10);
      for (const p of points) {
        ctx.globalAlpha = box && !inBox(p) ? 0.15 : 0.6;
        ctx.fillStyle = "hsl(" + (10 + 110 * p.corr) + ",70%,45%)";
        ctx.fillRect(sx(p.vari) - 2, sy(p.conf) - 2, 4, 4);
      }
      ctx.globalAlpha = 1;
      const r = drag && drag.end ? drag : box && { start: [sx(box.v0), sy(box.c1)], end: [sx(box.v1), sy(box.c0)] };
      if (r) {
        ctx.strokeStyle = "#1d2330"; ctx.setLineDash([4, 3]);
        ctx.strokeRect(r.start[0], r.start[1], r.end[0] - r.start[0], r.end[1] - r.start[1]); ctx.setLineDash([]);
      }
      const chosen = box ? points.filter(inBox) : [];
      const tbody = document.querySelector("#datamap-table tbody");
      tbody.replaceChildren();
      chosen.sort((a, b) => {
        const x = sortKey === "text" ? textOf(a.i) : a[sortKey], y = sortKey === "text" ? textOf(b.i) : b[sortKey];
        return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
      });
      for (const p of chosen.slice(0, 500)) {
        const tr = document.createElement("tr");
        [p.i, textOf(p.i), p.conf.toFixed(3), p.vari.toFixed(3), p.corr.toFixed(2)].forEach((v, k) => {
          const td = document.createElement("td"); text(td, v); td.className = k === 1 ? "text" : "num"; tr.appendChild(td);
        });
        tbody.appendChild(tr);
      }
      document.getElementById("datamap-table").dataset.rows = String(chosen.length);
      canvas.dataset.selected = String(chosen.length);
      text(document.getElementById("datamap-count"), box ? chosen.length + " of " + points.length + " training examples in the box" +
        (chosen.length > 500 ? " (first 500 shown)" : "") + " (variability " + box.v0.toFixed(3) + "–" + box.v1.toFixed(3) +
        ", confidence " + box.c0.toFixed(3) + "–" + box.c1.toFixed(3) + "). Click a header to sort." : "");
    }
    document.querySelectorAll("#datamap-table th[data-key]").forEach(th => th.addEventListener("click", () => {
      const k = th.dataset.key; sortDir = sortKey === k ? -sortDir : 1; sortKey = k; drawMap();
    }));
    const pos = e => { const b = canvas.getBoundingClientRect(); return [(e.clientX - b.left) * W / b.width, (e.clientY - b.top) * H / b.height]; };
    const hover = document.getElementById("datamap-hover");
    canvas.addEventListener("mousedown", e => { drag = { start: pos(e), end: null }; });
    canvas.addEventListener("mousemove", e => {
      const [x, y] = pos(e);
      if (drag) { drag.end = [x, y]; drawMap(); return; }
      let best = null, bd = 64;
      for (const p of points) { const d = (sx(p.vari) - x) ** 2 + (sy(p.conf) - y) ** 2; if (d < bd) { bd = d; best = p; } }
      if (!best) { text(hover, ""); return; }
      text(hover, "#" + best.i + "  confidence " + best.conf.toFixed(3) + "  variability " + best.vari.toFixed(3) + "  correct " + best.corr.toFixed(2) + "\n" + textOf(best.i));
    });
    window.addEventListener("mouseup", () => {
      if (!drag) return;
      const d = drag; drag = null;
      if (d.end && Math.abs(d.end[0] - d.start[0]) > 3 && Math.abs(d.end[1] - d.start[1]) > 3) {
        const [a0, b0] = fromScreen(...d.start), [a1, b1] = fromScreen(...d.end);
        box = { v0: Math.min(a0, a1), v1: Math.max(a0, a1), c0: Math.min(b0, b1), c1: Math.max(b0, b1) };
      }
      drawMap();
    });
    canvas.addEventListener("dblclick", () => { box = null; drawMap(); });
    const dm = window.kilnParams().dmbox; // #dmbox=v0,v1,c0,c1
    if (dm) { const [v0, v1, c0, c1] = dm.split(",").map(Number); box = { v0, v1, c0, c1 }; }
    drawMap();
  }

  // Converted models: which layers run which attention, with what settings and parameters.
  if (att) {
    document.getElementById("variants-section").hidden = false;
    const t = document.getElementById("variants");
    const settings = Object.entries(att.settings).map(([k, v]) => k + " " + v).join(", ");
    const converted = att.layers;
    const per = ((data.trainable && data.trainable.per_module) || []).filter(m => /^layer\.\d+\.attention$/.test(m[0]));
    row(t, ["layer", "attention", "settings", "parameters", "trainable"]);
    per.forEach(m => {
      const l = +m[0].split(".")[1];
      const isConverted = converted == null || converted.indexOf(l) >= 0;
      row(t, [String(l), isConverted ? att.kind : "softmax", isConverted ? settings : "", m[2], m[1]], true);
    });
    t.dataset.rows = String(per.length);
    const tl = data.transfer || [];
    text(document.getElementById("variants-note"), "Softmax attention of the pretrained model replaced by " + att.kind +
      (converted == null ? " in every layer" : " in layers " + converted.join(", ")) + "; " +
      (att.transfer ? "attention transfer before fine-tuning (" + tl.length + " steps, loss " + fmt(tl.length ? tl[0].loss : null) + " → " + fmt(tl.length ? tl[tl.length - 1].loss : null) + ")" : "no attention transfer") +
      "; dev " + (r.final_metrics ? r.final_metrics.primary + " " + fmt(r.final_metrics.values[r.final_metrics.primary]) : "—") + ".");
  }

  if (data.trainable) {
    document.getElementById("trainable-section").hidden = false;
    const t = document.getElementById("trainable");
    row(t, ["module", "trainable", "total"]);
    (data.trainable.per_module || []).forEach(m => row(t, m, true));
    row(t, ["all (" + fmt(data.trainable.percent) + " %)", data.trainable.trainable, data.trainable.total], true);
  }
})();
