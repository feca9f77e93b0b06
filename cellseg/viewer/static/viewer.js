// cellseg results viewer: reads the JSON block #data, builds the summary, the sortable table and
// the per-image view. Plain ES2017, no library, no network: the page must open from file://.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app");
  const R = D.runs, NR = R.length, TRUTH = D.has_truth;
  const RUN_COLORS = ["#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c"];
  const state = { key: null, dir: 1, type: "", rows: [], open: -1, zoom: 1, fx: 0.5, fy: 0.5 };

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of kids) if (c != null) e.append(c);
    return e;
  }
  // pictures: files in img/ beside the page, or data URIs embedded in it (window.PICS)
  const pic = (name) => (window.PICS && window.PICS[name]) || "img/" + name;
  const fmt = (x, nd) => (x === null || x === undefined ? "–" : Number(x).toFixed(nd === undefined ? 4 : nd));
  const signed = (x, nd) => (x === null || x === undefined ? "–" : (x > 0 ? "+" : "") + Number(x).toFixed(nd === undefined ? 4 : nd));

  // ---------------------------------------------------------------- summary
  function curveSvg() {
    const W = 420, H = 220, L = 44, B = 30, T = 10, Rm = 10;
    const th = D.thresholds.map(Number);
    const x = (t) => L + ((t - th[0]) / (th[th.length - 1] - th[0])) * (W - L - Rm);
    const y = (s) => T + (1 - s) * (H - T - B);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("class", "curve");
    const add = (tag, a, text) => {
      const e = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(a)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    for (const s of [0, 0.25, 0.5, 0.75, 1]) {
      add("line", { x1: L, x2: W - Rm, y1: y(s), y2: y(s), class: "grid" });
      add("text", { x: L - 6, y: y(s) + 4, "text-anchor": "end" }, s.toFixed(2));
    }
    th.forEach((t, i) => { if (i % 2 === 0) add("text", { x: x(t), y: H - 10, "text-anchor": "middle" }, t.toFixed(2)); });
    add("text", { x: (W + L) / 2, y: H, "text-anchor": "middle", class: "axis" }, "IoU threshold");
    R.forEach((run, j) => {
      const pts = D.thresholds.map((k) => [x(Number(k)), y(run.summary.per_threshold[k])]);
      add("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none",
        stroke: RUN_COLORS[j % 4], "stroke-width": 2 });
      pts.forEach((p) => add("circle", { cx: p[0], cy: p[1], r: 2.5, fill: RUN_COLORS[j % 4] }));
    });
    return svg;
  }

  function summary() {
    const sec = el("section", { id: "summary" });
    const cards = el("div", { class: "cards" });
    R.forEach((run, j) => {
      const s = run.summary;
      const card = el("div", { class: "card", id: `run-${j}` },
        el("div", { class: "run-name", style: `border-color:${RUN_COLORS[j % 4]}` }, (NR > 1 ? "ABCD"[j] + ": " : "") + run.name));
      if (TRUTH) {
        const c = s.counts;
        card.append(el("div", { class: "big", id: `score-${j}`, text: fmt(s.score) }),
          el("div", { class: "muted", text: "competition score (mean of image scores)" }),
          el("table", { class: "kv" },
            el("tr", {}, el("th", { text: "images" }), el("td", { id: `n-images-${j}`, text: c.n_images })),
            el("tr", {}, el("th", { text: "true cells" }), el("td", { id: `n-true-${j}`, text: c.n_true })),
            el("tr", {}, el("th", { text: "predicted" }), el("td", { id: `n-pred-${j}`, text: c.n_pred })),
            el("tr", {}, el("th", { text: "TP / FP / FN at 0.5" }),
              el("td", { id: `tpfpfn-${j}`, text: `${c.tp["0.50"]} / ${c.fp["0.50"]} / ${c.fn["0.50"]}` }))));
        if (run.vs_first) {
          const v = run.vs_first;
          card.append(el("div", { class: "vs", id: `vs-${j}` },
            el("b", { text: `${"ABCD"[j]} better on ${v.better} of ${v.n} images` }),
            ` (worse on ${v.worse}, tied on ${v.tied}); mean paired difference ${"ABCD"[j]} − A = `,
            el("b", { class: v.mean_diff >= 0 ? "up" : "down", text: signed(v.mean_diff) }),
            ` (sd ${fmt(v.sd_diff)})`));
        }
      } else {
        card.append(el("div", { class: "big", text: String(s.n_pred) }),
          el("div", { class: "muted", text: `predicted cells on ${s.n_images} images` }));
      }
      const info = run.info || {};
      if (Object.keys(info).length) {
        card.append(el("details", { class: "info" }, el("summary", { text: "how these predictions were made" }),
          el("pre", { text: JSON.stringify(info, null, 1) })));
      } else {
        card.append(el("div", { class: "muted small", text: "inference config / checkpoints: not recorded with these predictions" }));
      }
      cards.append(card);
    });
    sec.append(cards);
    if (TRUTH) {
      const legend = el("div", { class: "curve-legend" });
      R.forEach((run, j) => legend.append(el("span", { style: `color:${RUN_COLORS[j % 4]}` }, "■ " + run.name + " ")));
      const types = Object.keys(R[0].summary.per_cell_type);
      const tt = el("table", { class: "grid-table", id: "per-type" },
        el("tr", {}, el("th", { text: "cell type" }), el("th", { text: "images" }),
          ...R.map((r) => el("th", { text: r.name }))));
      for (const t of types) {
        tt.append(el("tr", {}, el("td", { text: t }), el("td", { text: R[0].summary.n_per_cell_type[t] }),
          ...R.map((r, j) => el("td", { "data-type": t, id: `type-${j}-${t}`, text: fmt(r.summary.per_cell_type[t]) }))));
      }
      const thr = el("table", { class: "grid-table", id: "per-threshold" },
        el("tr", {}, el("th", { text: "IoU >" }), ...R.flatMap((r) => [
          el("th", { text: (NR > 1 ? r.name + " " : "") + "score" }), el("th", { text: "TP" }), el("th", { text: "FP" }), el("th", { text: "FN" })])));
      for (const k of D.thresholds) {
        thr.append(el("tr", {}, el("td", { text: k }), ...R.flatMap((r, j) => {
          const c = r.summary.counts;
          return [el("td", { id: `thr-${j}-${k}`, text: fmt(r.summary.per_threshold[k]) }),
            el("td", { text: c.tp[k] }), el("td", { text: c.fp[k] }), el("td", { text: c.fn[k] })];
        })));
      }
      sec.append(el("div", { class: "row" },
        el("div", {}, el("h3", { text: "Score per IoU threshold" }), curveSvg(), legend),
        el("div", {}, el("h3", { text: "Per cell type" }), tt),
        el("div", {}, el("h3", { text: "Counts per threshold (summed over images)" }), thr)));
    }
    return sec;
  }

  // ---------------------------------------------------------------- table
  function columns() {
    const cols = [{ key: "id", label: "image", get: (r) => r.id, str: true },
      { key: "type", label: "cell type", get: (r) => r.type, str: true }];
    if (TRUTH) cols.push({ key: "n_true", label: "true", get: (r) => r.n_true });
    R.forEach((run, j) => {
      const p = NR > 1 ? "ABCD"[j] + " " : "";
      if (TRUTH) {
        cols.push({ key: `score${j}`, label: p + "score", get: (r) => r.runs[j].score, nd: 3, cls: "num strong" });
        if (j > 0) cols.push({ key: `diff${j}`, label: `${"ABCD"[j]} − A`, get: (r) => r.runs[j].score - r.runs[0].score, nd: 3, diff: true });
      }
      cols.push({ key: `pred${j}`, label: p + "predicted", get: (r) => r.runs[j].n_pred });
      if (TRUTH) {
        cols.push({ key: `tp${j}`, label: p + "TP", get: (r) => r.runs[j].tp },
          { key: `fp${j}`, label: p + "FP", get: (r) => r.runs[j].fp },
          { key: `fn${j}`, label: p + "FN", get: (r) => r.runs[j].fn },
          { key: `iou${j}`, label: p + "mean IoU", get: (r) => r.runs[j].iou, nd: 3 });
      } else {
        cols.push({ key: `conf${j}`, label: p + "mean score", get: (r) => r.runs[j].conf, nd: 3 });
      }
    });
    return cols;
  }
  const COLS = columns();
  const defaultKey = TRUTH ? (NR > 1 ? "diff1" : "score0") : (D.images.some((r) => r.runs[0].conf !== null) ? "conf0" : "pred0");

  function sortRows() {
    const col = COLS.find((c) => c.key === state.key);
    const rows = D.images.map((r, i) => i).filter((i) => !state.type || D.images[i].type === state.type);
    rows.sort((a, b) => {
      let va = col.get(D.images[a]), vb = col.get(D.images[b]);
      if (va === null || va === undefined) return 1;
      if (vb === null || vb === undefined) return -1;
      const c = col.str ? String(va).localeCompare(String(vb)) : va - vb;
      return c * state.dir || a - b;
    });
    state.rows = rows;
  }

  function table() {
    const sec = el("section", { id: "table-sec" });
    const types = [...new Set(D.images.map((r) => r.type))].sort();
    const sel = el("select", { id: "type-filter", onchange: (e) => { state.type = e.target.value; renderBody(); } },
      el("option", { value: "", text: "all cell types" }), ...types.map((t) => el("option", { value: t, text: t })));
    sec.append(el("div", { class: "controls" }, el("h2", { text: "Images" }), sel,
      el("span", { id: "n-shown", class: "muted" }),
      el("span", { class: "muted small", text: " click a column to sort, a row to open the image" })));
    const thead = el("thead", {}, el("tr", {}, ...COLS.map((c) => el("th", {
      "data-key": c.key, class: c.str ? "" : "num", onclick: () => {
        state.dir = state.key === c.key ? -state.dir : (c.str ? 1 : 1);
        state.key = c.key; renderBody();
      } }, c.label))));
    sec.append(el("div", { class: "scroll" }, el("table", { id: "images" }, thead, el("tbody", {}))));
    return sec;
  }

  function renderBody() {
    sortRows();
    const tb = document.querySelector("#images tbody");
    tb.textContent = "";
    for (const i of state.rows) {
      const r = D.images[i];
      tb.append(el("tr", { "data-id": r.id, "data-index": i, onclick: () => openImage(i) },
        ...COLS.map((c) => {
          const v = c.get(r);
          const txt = c.str ? v : (v === null || v === undefined ? "–" : (c.diff ? signed(v, c.nd) : (c.nd ? fmt(v, c.nd) : String(v))));
          return el("td", { class: (c.str ? "" : "num ") + (c.diff ? (v > 1e-9 ? "up" : v < -1e-9 ? "down" : "") : ""), text: txt });
        })));
    }
    document.querySelectorAll("#images th").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.key === state.key);
      th.dataset.dir = th.dataset.key === state.key ? (state.dir > 0 ? "asc" : "desc") : "";
    });
    document.getElementById("n-shown").textContent = `${state.rows.length} of ${D.images.length} images`;
  }

  // ---------------------------------------------------------------- one image
  function detail() {
    const box = el("div", { id: "detail", class: "hidden" });
    const tog = (id, label) => {
      const cb = el("input", { type: "checkbox", id, onchange: applyLayers });
      cb.checked = true;
      return el("label", {}, cb, " " + label);
    };
    const cbs = [];
    if (TRUTH) cbs.push(tog("show-truth", "truth"));
    cbs.push(tog("show-pred", "prediction"));
    if (TRUTH) cbs.push(tog("show-errors", "errors"));
    const zooms = [1, 2, 4].map((z) => el("button", { class: "zoom", "data-zoom": z, onclick: () => setZoom(z) }, z + "×"));
    const legend = TRUTH ?
      el("div", { class: "legend" },
        el("span", { class: "sw", style: "background:#468cff" }), "truth ",
        el("span", { class: "sw", style: "background:#28e63c" }), "matched prediction (IoU > 0.5) ",
        el("span", { class: "sw", style: "background:#ffdc00" }), "missed true cell ",
        el("span", { class: "sw", style: "background:#ff2828" }), "false positive ",
        el("span", { class: "sw", style: "background:#f046ff" }), "near-miss (best IoU 0.3–0.5)") :
      el("div", { class: "legend" }, el("span", { class: "sw", style: "background:#00e6e6" }), "predicted cell");
    box.append(el("div", { class: "bar" },
      el("button", { id: "prev", onclick: () => step(-1), title: "previous (←)" }, "◀"),
      el("button", { id: "next", onclick: () => step(1), title: "next (→)" }, "▶"),
      el("span", { id: "detail-title" }),
      el("span", { class: "spacer" }),
      ...cbs, el("span", { class: "zooms" }, "zoom ", ...zooms),
      el("button", { id: "close", onclick: closeImage, title: "close (Esc)" }, "✕")),
      legend, el("div", { id: "panes" }),
      el("div", { class: "muted small", text: "Click a point to zoom there (2× from 1×); ←/→ previous/next image, Esc closes." }));
    return box;
  }

  function openImage(i) {
    state.open = i;
    const r = D.images[i];
    const panes = document.getElementById("panes");
    panes.textContent = "";
    document.getElementById("detail").classList.remove("hidden");  // before measuring
    // the panes share the row (12 px gaps); a narrow window wraps them at 320 px
    const avail = Math.max(320, Math.floor((panes.clientWidth - 12 * (NR - 1)) / NR) - 1);
    const w = Math.min(r.w, avail), h = (w * r.h) / r.w;
    R.forEach((run, j) => {
      const c = r.runs[j];
      const stack = el("div", { class: "stack", style: `width:${w}px;height:${h}px` },
        el("img", { src: pic(`${i}.jpg`), class: "base", alt: r.id }),
        TRUTH ? el("img", { src: pic(`${i}.t.png`), class: "layer layer-truth", alt: "" }) : null,
        el("img", { src: pic(`${i}.${j}.p.png`), class: "layer layer-pred", alt: "" }),
        TRUTH ? el("img", { src: pic(`${i}.${j}.e.png`), class: "layer layer-errors", alt: "" }) : null);
      const view = el("div", { class: "view", style: `width:${w}px;height:${h}px`, onclick: (e) => clickZoom(e, view, stack) }, stack);
      const stats = TRUTH ?
        `score ${fmt(c.score)}  ·  ${c.n_pred} predicted / ${r.n_true} true  ·  TP ${c.tp} FP ${c.fp} FN ${c.fn} (near-miss ${c.near})  ·  mean IoU ${fmt(c.iou, 3)}` :
        `${c.n_pred} cells  ·  mean score ${fmt(c.conf, 3)}`;
      panes.append(el("figure", { class: "pane", "data-run": j, style: `width:${w}px` },
        el("figcaption", {}, el("b", { style: `color:${RUN_COLORS[j % 4]}`, text: (NR > 1 ? "ABCD"[j] + ": " : "") + run.name }), "  " + stats),
        view));
    });
    let title = `${r.id}  ·  ${r.type}`;
    if (TRUTH && NR > 1) title += `  ·  B − A ${signed(r.runs[1].score - r.runs[0].score)}`;
    document.getElementById("detail-title").textContent = title;
    document.getElementById("detail").classList.remove("hidden");
    document.body.classList.add("modal");
    state.zoom = 1; state.fx = 0.5; state.fy = 0.5;
    applyZoom(); applyLayers();
  }
  function closeImage() {
    state.open = -1;
    document.getElementById("detail").classList.add("hidden");
    document.body.classList.remove("modal");
  }
  function step(d) {
    if (state.open < 0) return;
    const pos = state.rows.indexOf(state.open);
    const next = state.rows[pos + d];
    if (next !== undefined) openImage(next);
  }
  function applyLayers() {
    for (const [id, cls] of [["show-truth", "layer-truth"], ["show-pred", "layer-pred"], ["show-errors", "layer-errors"]]) {
      const cb = document.getElementById(id);
      if (!cb) continue;
      document.querySelectorAll("." + cls).forEach((e) => { e.style.display = cb.checked ? "" : "none"; });
    }
  }
  function setZoom(z) { state.zoom = z; applyZoom(); }
  function clickZoom(ev, view, stack) {
    const rect = view.getBoundingClientRect();
    const w = rect.width, h = rect.height, z = state.zoom;
    const [tx, ty] = offsets(w, h);
    state.fx = (ev.clientX - rect.left - tx) / (w * z);
    state.fy = (ev.clientY - rect.top - ty) / (h * z);
    if (state.zoom === 1) state.zoom = 2;
    applyZoom();
  }
  function offsets(w, h) {
    const z = state.zoom;
    const clamp = (v, lo) => Math.min(0, Math.max(lo, v));
    return [clamp(w / 2 - state.fx * w * z, w - w * z), clamp(h / 2 - state.fy * h * z, h - h * z)];
  }
  function applyZoom() {
    document.querySelectorAll("#panes .view").forEach((view) => {
      const w = view.clientWidth, h = view.clientHeight;
      const [tx, ty] = offsets(w, h);
      view.firstChild.style.transform = `translate(${tx}px, ${ty}px) scale(${state.zoom})`;
    });
    document.querySelectorAll("button.zoom").forEach((b) => b.classList.toggle("on", Number(b.dataset.zoom) === state.zoom));
    document.getElementById("detail").dataset.zoom = String(state.zoom);
  }
  document.addEventListener("keydown", (e) => {
    if (state.open < 0) return;
    if (e.key === "Escape") closeImage();
    else if (e.key === "ArrowRight") step(1);
    else if (e.key === "ArrowLeft") step(-1);
  });

  // ---------------------------------------------------------------- start
  document.getElementById("when").textContent = `written ${D.created}` + (D.command ? ` by: ${D.command}` : "");
  app.textContent = "";
  app.append(summary(), table(), detail());
  state.key = defaultKey;
  state.dir = 1;
  renderBody();
})();
