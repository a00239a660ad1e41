"use strict";
// kiln report, analysis views (RUN/analysis/analysis.json, written by `cargo xtask lens
// analyse`): projection ↔ table (linked selection and filters), head grid + pruning curve,
// instance view (token saliency, attention of a head, mixing ratios). Strings only ever go
// through textContent. Canvas everywhere: one draw call per point, no DOM node per point.
// State for tests: #projection[data-drawn], #examples[data-rows], body[data-ready].
(function () {
  const data = JSON.parse(document.getElementById("kiln-data").textContent);
  const A = data.analysis;
  const palette = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285"];
  function text(el, s) { el.textContent = s == null ? "" : String(s); }
  function fmt(v, d) { return typeof v === "number" ? v.toFixed(d == null ? 3 : d) : (v == null ? "—" : String(v)); }
  function option(select, value, label) {
    const o = document.createElement("option"); o.value = String(value); text(o, label); select.appendChild(o);
  }
  function ramp(t) { // 0 → light, 1 → dark blue
    t = Math.max(0, Math.min(1, t));
    const c = [Math.round(240 - 200 * t), Math.round(244 - 150 * t), Math.round(250 - 60 * t)];
    return "rgb(" + c.join(",") + ")";
  }
  function diverging(t) { // -1 red … 0 white … 1 blue
    t = Math.max(-1, Math.min(1, t));
    const a = Math.abs(t);
    return t >= 0 ? "rgba(47,111,222," + a + ")" : "rgba(217,72,15," + a + ")";
  }
  if (!A || !A.examples) { document.body.dataset.ready = "1"; return; }

  const ex = A.examples.map((e, i) => Object.assign({ index: i }, e));
  const regression = !!A.regression;
  ex.forEach(e => {
    e.textShown = Array.isArray(e.text) ? e.text[0] + "  ‖  " + e.text[1] : String(e.text);
    e.correct = regression ? null : e.prediction === e.label;
  });
  const state = { selected: null, sortKey: "index", sortDir: 1, view: null, focusInstance: 0, focusHead: [0, 0], focusToken: 0 };

  // ---------- filters and selection ----------
  const filterSel = document.getElementById("proj-filter");
  const minLoss = document.getElementById("proj-minloss");
  const labelSel = document.getElementById("proj-label");
  function passes(e) {
    const f = filterSel.value;
    if (labelSel.value !== "" && String(e.label) !== labelSel.value) return false;
    if (f === "correct" && e.correct !== true) return false;
    if (f === "wrong" && e.correct !== false) return false;
    return e.loss >= (+minLoss.value || 0);
  }
  function visible(e) { return passes(e) && (state.selected == null || state.selected.has(e.index)); }

  // ---------- projection (main checkpoint, and optionally a second one beside it) ----------
  const proj = document.getElementById("projection");
  const layerSel = document.getElementById("proj-layer");
  const methodSel = document.getElementById("proj-method");
  const colourSel = document.getElementById("proj-colour");
  const compareSel = document.getElementById("proj-compare");
  const layers = A.projection.layers;
  layers.forEach((p, k) => option(layerSel, k, "layer " + p.layer));
  layerSel.value = String(layers.length - 1);
  // Methods the analysis holds (older analyses have no UMAP).
  methodSel.querySelectorAll("option").forEach(o => { if (!layers.some(l => l[o.value])) o.remove(); });
  if (regression) { colourSel.querySelector('option[value="correct"]').remove(); colourSel.querySelector('option[value="p_gold"]').remove(); }
  // Category filter: one entry per gold label (classification only).
  if (regression) document.getElementById("proj-label-box").hidden = true;
  else [...new Set(ex.map(e => e.label))].sort((a, b) => a - b).forEach(l => option(labelSel, l, String(l)));
  // Coordinates arrive as little-endian f32 in base64 (kiln_viz::pack_projection) or as a
  // plain array (older files); decoded once into a Float32Array.
  function floats(c) {
    if (!c || Array.isArray(c)) return c || [];
    if (!c.decoded) {
      const bin = atob(c.base64), bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      c.decoded = new Float32Array(bytes.buffer);
    }
    return c.decoded;
  }
  // Another checkpoint's analysis of the same examples: its projection, colours from its own
  // predictions and losses; filters and selection stay those of the main checkpoint.
  const snapshots = (data.snapshots || []).filter(sn => sn.examples.length === ex.length && sn.projection && sn.projection.layers);
  snapshots.forEach((sn, k) => option(compareSel, k, sn.name));
  const panels = [{ canvas: proj, name: "best", layers: layers, ex: ex, view: null }];
  function setCompare(k) {
    panels.length = 1;
    const box = document.getElementById("proj-compare-box");
    if (k === "" || !snapshots[+k]) { box.hidden = true; return; }
    const sn = snapshots[+k];
    const sex = ex.map((e, i) => {
      const o = Object.assign({}, e, sn.examples[i]);
      o.correct = regression ? null : o.prediction === o.label;
      return o;
    });
    panels.push({ canvas: document.getElementById("projection-b"), name: sn.name, layers: sn.projection.layers, ex: sex, view: null });
    text(document.getElementById("proj-b-caption"), "checkpoint \"" + sn.name + "\"");
    text(document.getElementById("proj-a-caption"), "checkpoint \"best\"");
    box.hidden = false;
  }
  function coordsOf(panel) {
    const l = panel.layers[+layerSel.value], p = l && l[methodSel.value];
    return p ? floats(p.coords) : [];
  }
  function bounds(c) {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < c.length; i += 2) { x0 = Math.min(x0, c[i]); x1 = Math.max(x1, c[i]); y0 = Math.min(y0, c[i + 1]); y1 = Math.max(y1, c[i + 1]); }
    const px = (x1 - x0) * 0.05 || 1, py = (y1 - y0) * 0.05 || 1;
    return { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
  }
  function colourOf(e, range) {
    const c = colourSel.value;
    if (c === "label") return regression ? ramp((e.label - range.lmin) / (range.lmax - range.lmin || 1)) : palette[e.label % palette.length];
    if (c === "prediction") return regression ? ramp((e.prediction - range.lmin) / (range.lmax - range.lmin || 1)) : palette[e.prediction % palette.length];
    if (c === "correct") return e.correct ? "#2b8a3e" : "#c92a2a";
    if (c === "p_gold") return ramp(e.p_gold);
    return ramp(e.loss / (range.maxLoss || 1));
  }
  const toScreen = (cv, v, x, y) => [(x - v.x0) / (v.x1 - v.x0) * cv.width, cv.height - (y - v.y0) / (v.y1 - v.y0) * cv.height];
  const toData = (cv, v, sx, sy) => [v.x0 + sx / cv.width * (v.x1 - v.x0), v.y0 + (cv.height - sy) / cv.height * (v.y1 - v.y0)];
  let drag = null;
  function drawPanel(panel) {
    const cv = panel.canvas, c = coordsOf(panel), pex = panel.ex;
    if (!panel.view) panel.view = bounds(c);
    const v = panel.view, ctx = cv.getContext("2d");
    ctx.clearRect(0, 0, cv.width, cv.height);
    let maxLoss = 0, lmin = Infinity, lmax = -Infinity;
    for (const e of pex) { maxLoss = Math.max(maxLoss, e.loss); lmin = Math.min(lmin, +e.label); lmax = Math.max(lmax, +e.label); }
    const range = { maxLoss, lmin, lmax };
    let drawn = 0;
    for (const dim of [true, false]) { // unselected first, dimmed; then the visible ones
      ctx.globalAlpha = dim ? 0.15 : 0.85;
      for (const e of pex) {
        if (!passes(ex[e.index])) continue;
        const sel = state.selected == null || state.selected.has(e.index);
        if (sel === dim) continue;
        const [x, y] = toScreen(cv, v, c[2 * e.index], c[2 * e.index + 1]);
        if (x < 0 || y < 0 || x > cv.width || y > cv.height) continue;
        ctx.fillStyle = colourOf(e, range);
        ctx.fillRect(x - 2.5, y - 2.5, 5, 5);
        if (!dim) drawn++;
      }
    }
    ctx.globalAlpha = 1;
    if (drag && drag.end && drag.panel === panel) {
      ctx.strokeStyle = "#1d2330"; ctx.setLineDash([4, 3]);
      ctx.strokeRect(drag.start[0], drag.start[1], drag.end[0] - drag.start[0], drag.end[1] - drag.start[1]);
      ctx.setLineDash([]);
    }
    cv.dataset.drawn = String(drawn);
  }
  function scoresText(panel) {
    const l = panel.layers[+layerSel.value], p = l && l[methodSel.value], s = p && p.scores;
    return s ? ("neighbourhood preservation " + fmt(s.neighbourhood_preservation) + ", trustworthiness " + fmt(s.trustworthiness) +
      (p.explained_variance_ratio ? "; explained variance " + p.explained_variance_ratio.map(x => fmt(100 * x, 1) + "%").join(" + ") : "")) : "";
  }
  function drawProjection() {
    panels.forEach(drawPanel);
    const main = scoresText(panels[0]);
    text(document.getElementById("proj-scores"), main ? "Distortion at k = " + A.projection.k + ": " + main +
      (panels[1] ? "; \"" + panels[1].name + "\": " + scoresText(panels[1]) : "") + ". Points: " + A.projection.of + "." : "");
  }
  function mouse(cv, ev) { const r = cv.getBoundingClientRect(); return [(ev.clientX - r.left) * cv.width / r.width, (ev.clientY - r.top) * cv.height / r.height]; }
  function listen(panel) {
    const cv = panel.canvas;
    cv.addEventListener("mousedown", ev => { const p = panels.find(q => q.canvas === cv); if (p) drag = { panel: p, start: mouse(cv, ev), end: null }; });
    cv.addEventListener("mousemove", ev => {
      const p = panels.find(q => q.canvas === cv); if (!p) return;
      const m = mouse(cv, ev);
      if (drag) { if (drag.panel === p) { drag.end = m; drawPanel(p); } return; }
      const c = coordsOf(p); let best = null, bd = 36;
      for (const e of p.ex) {
        if (!visible(ex[e.index])) continue;
        const [x, y] = toScreen(cv, p.view, c[2 * e.index], c[2 * e.index + 1]);
        const d = (x - m[0]) ** 2 + (y - m[1]) ** 2;
        if (d < bd) { bd = d; best = e; }
      }
      text(document.getElementById("proj-hover"), best ? "#" + best.index + " (" + p.name + ")  label " + best.label + "  prediction " + best.prediction + "  loss " + fmt(best.loss) + "\n" + best.textShown : "");
    });
    cv.addEventListener("wheel", ev => {
      const p = panels.find(q => q.canvas === cv); if (!p) return;
      ev.preventDefault();
      const v = p.view, [mx, my] = toData(cv, v, ...mouse(cv, ev)), f = ev.deltaY > 0 ? 1.2 : 1 / 1.2;
      p.view = { x0: mx + (v.x0 - mx) * f, x1: mx + (v.x1 - mx) * f, y0: my + (v.y0 - my) * f, y1: my + (v.y1 - my) * f };
      drawPanel(p);
    }, { passive: false });
    cv.addEventListener("dblclick", () => { const p = panels.find(q => q.canvas === cv); if (p) { p.view = null; drawPanel(p); } });
  }
  listen(panels[0]);
  listen({ canvas: document.getElementById("projection-b") });
  window.addEventListener("mouseup", () => {
    if (!drag) return;
    const d = drag; drag = null;
    if (d.end && Math.abs(d.end[0] - d.start[0]) > 3 && Math.abs(d.end[1] - d.start[1]) > 3) {
      const cv = d.panel.canvas, v = d.panel.view;
      const [ax, ay] = toData(cv, v, d.start[0], d.start[1]), [bx, by] = toData(cv, v, d.end[0], d.end[1]);
      const c = coordsOf(d.panel), sel = new Set();
      for (const e of ex) {
        const x = c[2 * e.index], y = c[2 * e.index + 1];
        if (x >= Math.min(ax, bx) && x <= Math.max(ax, bx) && y >= Math.min(ay, by) && y <= Math.max(ay, by)) sel.add(e.index);
      }
      state.selected = sel;
    }
    update();
  });
  [layerSel, methodSel].forEach(s => s.addEventListener("change", () => { panels.forEach(p => { p.view = null; }); drawProjection(); }));
  colourSel.addEventListener("change", drawProjection);
  compareSel.addEventListener("change", () => { setCompare(compareSel.value); drawProjection(); });
  [filterSel, minLoss, labelSel].forEach(s => s.addEventListener("input", update));
  document.getElementById("proj-clear").addEventListener("click", () => { state.selected = null; update(); });

  // ---------- table ----------
  const table = document.getElementById("examples"), tbody = table.querySelector("tbody");
  table.querySelectorAll("th[data-key]").forEach(th => th.addEventListener("click", () => {
    const k = th.dataset.key;
    state.sortDir = state.sortKey === k ? -state.sortDir : 1; state.sortKey = k; drawTable();
  }));
  const instanceOf = new Map((A.instances || []).map((inst, k) => [inst.example, k]));
  function drawTable() {
    const rows = ex.filter(visible);
    const key = state.sortKey === "text" ? "textShown" : state.sortKey;
    rows.sort((a, b) => {
      const x = a[key], y = b[key];
      return (x < y ? -1 : x > y ? 1 : 0) * state.sortDir;
    });
    tbody.replaceChildren();
    const limit = 500;
    for (const e of rows.slice(0, limit)) {
      const tr = document.createElement("tr");
      [e.index, e.textShown, e.label, e.prediction, fmt(e.p_gold), fmt(e.loss)].forEach((v, i) => {
        const td = document.createElement("td"); text(td, v);
        td.className = i === 1 ? "text" : "num"; tr.appendChild(td);
      });
      if (instanceOf.has(e.index)) {
        tr.title = "token-level view available: click";
        tr.addEventListener("click", () => { state.focusInstance = instanceOf.get(e.index); instPick.value = String(state.focusInstance); drawInstance(); });
      }
      tbody.appendChild(tr);
    }
    table.dataset.rows = String(rows.length);
    text(document.getElementById("table-count"), rows.length + " of " + ex.length + " dev examples" +
      (rows.length > limit ? " (first " + limit + " shown)" : "") + (state.selected ? "; selection of " + state.selected.size : "") + ". Click a header to sort.");
  }
  function update() { drawProjection(); drawTable(); }

  // ---------- heads ----------
  const H = A.heads;
  // Perplexity (decoder runs) is better lower: a harmful mask raises it.
  const lowerBetter = !!H && H.metric === "perplexity", split = A.split || "dev";
  const grid = document.getElementById("head-grid"), scoreSel = document.getElementById("head-score");
  function drawHeads() {
    if (!H) return;
    const base = H.pruning && H.pruning.length ? H.pruning[0].metric : 0;
    // "masked": how much worse the metric gets when the head alone is masked (negative = helps).
    const m = scoreSel.value === "masked" ? H.masked_metric.map(r => r.map(v => lowerBetter ? v - base : base - v))
      : scoreSel.value === "patterns" ? H.gate : H[scoreSel.value]; // patterns: only the shape of m is used
    const L = m.length, N = m[0].length, ctx = grid.getContext("2d");
    const max = Math.max(...m.flat().map(Math.abs)) || 1, left = 56, top = 20;
    const cw = (grid.width - left - 10) / N, ch = (grid.height - top - 10) / L;
    ctx.clearRect(0, 0, grid.width, grid.height);
    ctx.font = "11px sans-serif"; ctx.fillStyle = "#5b6475";
    for (let h = 0; h < N; h++) ctx.fillText("h" + h, left + h * cw + cw / 2 - 6, 14);
    for (let l = 0; l < L; l++) {
      ctx.fillStyle = "#5b6475"; ctx.fillText("layer " + l, 4, top + l * ch + ch / 2 + 4);
      for (let h = 0; h < N; h++) {
        if (scoreSel.value === "patterns") {
          // Thumbnail of this head's attention on the instance view's example.
          // One pixel per screen pixel (nearest query/key), whatever the sequence length.
          const inst = I[+instPick.value], s = inst.attention.seq, att = attention(+instPick.value);
          const base = (l * inst.attention.heads + h) * s * s;
          const w = Math.max(1, Math.floor(cw - 2)), hh = Math.max(1, Math.floor(ch - 2));
          const img = ctx.createImageData(w, hh);
          for (let y = 0; y < hh; y++) for (let x = 0; x < w; x++) {
            const v = att[base + Math.floor(y * s / hh) * s + Math.floor(x * s / w)] / 255, o = 4 * (y * w + x);
            img.data[o] = 240 - 200 * v; img.data[o + 1] = 244 - 150 * v; img.data[o + 2] = 250 - 60 * v; img.data[o + 3] = 255;
          }
          ctx.putImageData(img, Math.round(left + h * cw + 1), Math.round(top + l * ch + 1));
        } else {
          ctx.fillStyle = scoreSel.value === "masked" ? diverging(m[l][h] / max) : ramp(m[l][h] / max);
          ctx.fillRect(left + h * cw + 1, top + l * ch + 1, cw - 2, ch - 2);
        }
        if (scoreSel.value === "masked") { ctx.fillStyle = "#1d2330"; ctx.fillText(fmt(lowerBetter ? m[l][h] : -m[l][h], 3), left + h * cw + 3, top + l * ch + ch / 2 + 4); }
        if (l === state.focusHead[0] && h === state.focusHead[1]) { ctx.strokeStyle = "#d9480f"; ctx.lineWidth = 2; ctx.strokeRect(left + h * cw + 1, top + l * ch + 1, cw - 2, ch - 2); }
      }
    }
    grid.dataset.cells = String(L * N);
    grid.dataset.mode = scoreSel.value;
    grid.onclick = ev => {
      const r = grid.getBoundingClientRect();
      const x = (ev.clientX - r.left) * grid.width / r.width, y = (ev.clientY - r.top) * grid.height / r.height;
      const h = Math.floor((x - left) / cw), l = Math.floor((y - top) / ch);
      if (h >= 0 && h < N && l >= 0 && l < L) { state.focusHead = [l, h]; instLayer.value = String(l); instHead.value = String(h); drawHeads(); drawInstance(); }
    };
    const pr = document.getElementById("pruning"), c = pr.getContext("2d");
    const pts = H.pruning, W = pr.width, Ht = pr.height, Lm = 48, B = 28;
    c.clearRect(0, 0, W, Ht);
    const ys = pts.map(p => p.metric), y0 = Math.min(0, ...ys), y1 = Math.max(...ys, 1e-9);
    // The x axis ends at the largest share pruned, with room for its label.
    const smax = Math.max(0.1, ...pts.map(p => p.share));
    const sx = s => Lm + 8 + s * (W - Lm - 30) / smax, sy = y => Ht - B - (y - y0) / (y1 - y0) * (Ht - B - 10);
    c.strokeStyle = "#c5ccd8"; c.beginPath(); c.moveTo(Lm, 10); c.lineTo(Lm, Ht - B); c.lineTo(W - 10, Ht - B); c.stroke();
    c.fillStyle = "#5b6475"; c.font = "11px sans-serif";
    [y0, (y0 + y1) / 2, y1].forEach(y => c.fillText(fmt(y, 2), 4, sy(y) + 4));
    c.textAlign = "center";
    pts.forEach(p => c.fillText(Math.round(100 * p.share) + "%", sx(p.share), Ht - 10));
    c.textAlign = "left";
    c.strokeStyle = palette[0]; c.lineWidth = 1.5; c.beginPath();
    pts.forEach((p, i) => i ? c.lineTo(sx(p.share), sy(p.metric)) : c.moveTo(sx(p.share), sy(p.metric))); c.stroke();
    text(document.getElementById("pruning-caption"), split + " " + H.metric + " (" + H.examples + " examples) with the least important heads (gate score) masked");
  }
  if (H && H.masked_metric) {
    option(scoreSel, "masked", (lowerBetter ? "rise of " : "drop of ") + split + " " + H.metric + " when masked alone");
  }
  if (H && (A.instances || []).length) option(scoreSel, "patterns", "attention patterns of the instance's example");
  scoreSel.addEventListener("change", drawHeads);

  // ---------- instance ----------
  const I = A.instances || [];
  const instPick = document.getElementById("inst-pick"), instMethod = document.getElementById("inst-method");
  const instLayer = document.getElementById("inst-layer"), instHead = document.getElementById("inst-head");
  const attCache = new Map();
  function attention(k) {
    if (!attCache.has(k)) {
      const bin = atob(I[k].attention.data), arr = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) arr[i] = bin.charCodeAt(i);
      attCache.set(k, arr);
    }
    return attCache.get(k);
  }
  function drawInstance() {
    if (!I.length) return;
    const inst = I[+instPick.value], s = inst.attention.seq, nh = inst.attention.heads;
    const l = +instLayer.value, h = +instHead.value;
    const method = instMethod.value;
    const classSel = document.getElementById("inst-class");
    const sal = inst.saliency && inst.saliency.per_class && classSel.value !== "" ? inst.saliency.per_class[+classSel.value] || inst.saliency : inst.saliency;
    let scores = inst[method] || (sal && sal[method]);
    const info = [];
    const e = ex[inst.example];
    info.push("#" + inst.example + ": label " + e.label + ", prediction " + e.prediction + (sal ? ", attributions to output " + sal.class : ""));
    if (method === "integrated_gradients" && sal) {
      const c = sal.ig_completeness;
      info.push("completeness: Σ attributions " + fmt(c.sum) + " vs f(x) − f(baseline) " + fmt(c.f_x - c.f_baseline) + " (" + c.steps + " steps)");
    }
    if (!scores) { scores = inst.tokens.map(() => 0); info.push("(not available for this run)"); }
    text(document.getElementById("inst-info"), info.join("; "));
    const box = document.getElementById("inst-tokens"); box.replaceChildren();
    const isRollout = method.indexOf("rollout") >= 0;
    const scale = Math.max(...scores.map((v, i) => isRollout && i === 0 ? 0 : Math.abs(v))) || 1;
    inst.tokens.forEach((t, i) => {
      const span = document.createElement("span"); text(span, t);
      span.style.background = isRollout ? ramp(scores[i] / scale) : diverging(scores[i] / scale);
      span.title = t + ": " + fmt(scores[i], 4);
      if (i === state.focusToken) span.className = "focus";
      span.addEventListener("click", () => { state.focusToken = i; drawInstance(); });
      box.appendChild(span);
    });
    box.dataset.tokens = String(inst.tokens.length);
    // Attention map of (layer, head); the focused token's row is outlined.
    const att = attention(+instPick.value), cv = document.getElementById("inst-attention"), ctx = cv.getContext("2d");
    // Token labels: queries down the left, keys along the top (every k-th when cells are small).
    const M = 70, size = cv.width - M, cell = size / s;
    ctx.clearRect(0, 0, cv.width, cv.height);
    const base = (l * nh + h) * s * s;
    for (let i = 0; i < s; i++) for (let j = 0; j < s; j++) { ctx.fillStyle = ramp(att[base + i * s + j] / 255); ctx.fillRect(M + j * cell, M + i * cell, cell, cell); }
    const every = Math.max(1, Math.ceil(9 / cell)), short = t => t.length > 10 ? t.slice(0, 9) + "…" : t;
    ctx.fillStyle = "#5b6475"; ctx.font = Math.max(7, Math.min(11, Math.floor(cell * every) - 1)) + "px sans-serif";
    ctx.textAlign = "right";
    for (let i = 0; i < s; i += every) ctx.fillText(short(inst.tokens[i] || ""), M - 3, M + i * cell + cell / 2 + 3);
    for (let j = 0; j < s; j += every) {
      ctx.save(); ctx.translate(M + j * cell + cell / 2 + 3, M - 3); ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left"; ctx.fillText(short(inst.tokens[j] || ""), 0, 0); ctx.restore();
    }
    ctx.textAlign = "left";
    cv.dataset.labels = String(Math.ceil(s / every));
    const ft = Math.min(state.focusToken, s - 1);
    ctx.strokeStyle = "#d9480f"; ctx.lineWidth = 2; ctx.strokeRect(M, M + ft * cell, size, cell);
    const row = [];
    for (let j = 0; j < s; j++) row.push([att[base + ft * s + j] / 255, j]);
    row.sort((a, b) => b[0] - a[0]);
    text(document.getElementById("att-caption"), "layer " + l + ", head " + h + ": \"" + inst.tokens[ft] + "\" attends most to " +
      row.slice(0, 3).map(([v, j]) => "\"" + inst.tokens[j] + "\" " + fmt(v, 2)).join(", "));
    // Mixing ratios per layer.
    const mv = document.getElementById("inst-mixing"), mc = mv.getContext("2d"), keys = ["attn_w", "attn_n", "attnres_n", "attnresln_n"];
    const labels = { attn_w: "Attn-W", attn_n: "Attn-N", attnres_n: "AttnRes-N", attnresln_n: "AttnResLn-N" };
    const mixing = inst.mixing || []; // absent for decoders
    const W = mv.width, Hh = mv.height, Lm = 40, B = 24, n = mixing.length;
    mc.clearRect(0, 0, W, Hh);
    const sx = k => Lm + k * (W - Lm - 10) / Math.max(1, n - 1), sy = y => Hh - B - y * (Hh - B - 10);
    mc.strokeStyle = "#c5ccd8"; mc.beginPath(); mc.moveTo(Lm, 10); mc.lineTo(Lm, Hh - B); mc.lineTo(W - 10, Hh - B); mc.stroke();
    mc.fillStyle = "#5b6475"; mc.font = "11px sans-serif";
    [0, 0.5, 1].forEach(y => mc.fillText(String(y), 8, sy(y) + 4));
    for (let k = 0; k < n; k++) mc.fillText("L" + k, sx(k) - 6, Hh - 8);
    const legend = document.getElementById("mixing-legend"); legend.replaceChildren();
    keys.forEach((key, c) => {
      mc.strokeStyle = palette[c]; mc.lineWidth = 1.5; mc.beginPath();
      mixing.forEach((m, k) => k ? mc.lineTo(sx(k), sy(m[key])) : mc.moveTo(sx(k), sy(m[key]))); mc.stroke();
      const sp = document.createElement("span"); sp.style.color = palette[c]; text(sp, "■ " + labels[key]); legend.appendChild(sp);
    });
  }
  if (I.length) {
    I.forEach((inst, k) => option(instPick, k, "#" + inst.example + " " + ex[inst.example].textShown.slice(0, 60)));
    const classSel = document.getElementById("inst-class");
    option(classSel, "", "predicted");
    const nc = Math.max(0, ...I.map(i => i.saliency && i.saliency.per_class ? i.saliency.per_class.length : 0));
    // A decoder's outputs are the gold next token and, where it differs, the predicted one.
    const outputName = c => A.task === "causal-lm" ? ["gold next token", "predicted next token"][c] : "class " + c;
    for (let c = 0; c < nc; c++) option(classSel, c, regression ? "score" : outputName(c));
    classSel.addEventListener("change", drawInstance);
    for (let l = 0; l < I[0].attention.layers; l++) option(instLayer, l, String(l));
    for (let h = 0; h < I[0].attention.heads; h++) option(instHead, h, String(h));
    if (!I[0].saliency) instMethod.value = "rollout";
    [instPick, instMethod, instLayer, instHead].forEach(s => s.addEventListener("change", () => {
      state.focusHead = [+instLayer.value, +instHead.value]; drawInstance(); drawHeads();
    }));
  }

  // ---------- start ----------
  const p = window.kilnParams();
  if (p.filter) filterSel.value = p.filter;
  if (p.minloss) minLoss.value = p.minloss;
  if (p.label != null) labelSel.value = p.label;
  if (p.method) methodSel.value = p.method;
  if (p.heads && H && (p.heads !== "masked" || H.masked_metric) && (p.heads !== "patterns" || I.length)) scoreSel.value = p.heads;
  if (p.select) state.selected = new Set(p.select.split(",").map(Number));
  if (p.compare != null) {
    const k = snapshots.findIndex(sn => sn.name === p.compare);
    if (k >= 0) { compareSel.value = String(k); setCompare(String(k)); }
  }
  ["projection", "table"].forEach(id => { document.getElementById(id + "-section").hidden = false; });
  document.getElementById("heads-section").hidden = !H;
  document.getElementById("instance-section").hidden = !I.length;
  document.getElementById("proj-compare-label").hidden = !snapshots.length;
  update(); drawHeads(); drawInstance();
  const readyAt = performance.now(); // since navigation start: parse, decode, first draw
  // #bench=N: mean milliseconds of N filter changes (projection + table redrawn) and of N
  // projection redraws (as when panning), for `cargo xtask bench report`.
  if (p.bench) {
    const n = +p.bench || 10;
    let t = performance.now();
    for (let i = 0; i < n; i++) { filterSel.value = i % 2 ? "all" : "wrong"; update(); }
    document.body.dataset.benchFilterMs = ((performance.now() - t) / n).toFixed(2);
    t = performance.now();
    for (let i = 0; i < n; i++) drawProjection();
    document.body.dataset.benchDrawMs = ((performance.now() - t) / n).toFixed(2);
    document.body.dataset.readyMs = readyAt.toFixed(0);
  }
  document.body.dataset.ready = "1";
})();
