"""A latent-space explorer that works in a static HTML page, without a kernel (the book).

The ipywidgets explorer (``s4kit.viz.explorer``) needs a live Python kernel; this one embeds
the precomputed t-SNE embeddings of the runs' snapshots in the page and draws them with
Plotly (plotly.js inlined, so the page works offline). Controls: method, colouring (true
class, prediction, error, and sigma^2 only for runs that store it), and a slider over the
training snapshots labelled by iteration; the legend lists the classes by name and a click on
a class hides or shows it (the class filter).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .figures import ERROR_COLOUR, class_colours

CORRECT_COLOUR = (0.75, 0.75, 0.75)


def _hex(rgb) -> str:
    r, g, b = (int(round(255 * float(c))) for c in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def explorer_data(runs: dict) -> dict:
    """The JSON-ready content of the page from ``s4kit.viz.explorer.load_explorer_runs`` output.

    Returns ``{"runs": {name: {"names", "colours", "error", "correct", "label", "snapshots":
    [{"iteration", "x", "y", "pred", "sigma" (or None), "protos"}]}}}``; coordinates rounded to
    3 decimals (the page's size grows with pixels x snapshots x runs).
    """
    out = {}
    for key, run in runs.items():
        info = run["info"]
        labels = run["pixels"]["label"].astype(np.int64)
        names = list(info["names"])
        pal = class_colours(info["dataset"], len(names))
        snaps = []
        for (it, pts, protos), (_, snap) in zip(run["embedded"], run["snaps"]):
            sigma_key = next((k for k in snap if k.startswith("extra_sigma")), None)
            sigma = None
            if sigma_key is not None:
                s = np.asarray(snap[sigma_key], dtype=np.float64).reshape(len(labels), -1).mean(axis=1)
                sigma = np.round(s, 5).tolist()
            snaps.append({"iteration": int(it), "x": np.round(pts[:, 0], 3).tolist(),
                          "y": np.round(pts[:, 1], 3).tolist(), "pred": snap["pred"].astype(int).tolist(),
                          "sigma": sigma,
                          "protos": [[None, None] if not np.isfinite(p).all() else [round(float(p[0]), 3),
                                                                                    round(float(p[1]), 3)]
                                     for p in np.asarray(protos)]})
        out[key] = {"names": names, "colours": [_hex(c) for c in pal], "error": _hex(ERROR_COLOUR),
                    "correct": _hex(CORRECT_COLOUR), "label": labels.tolist(), "snapshots": snaps}
    return {"runs": out}


_PAGE = """<div class="s4kit-explorer" id="%(id)s">
<div style="display:flex;gap:1em;flex-wrap:wrap;align-items:center;font:14px sans-serif">
<label>method <select class="method"></select></label>
<label>colour <select class="colour"></select></label>
<label><input type="range" class="snap" min="0" value="0" step="1"> <span class="iter"></span></label>
</div>
<div class="plot" style="width:100%%;max-width:760px;height:560px"></div>
</div>
<script>
(function () {
  const DATA = %(data)s;
  const root = document.getElementById("%(id)s");
  const method = root.querySelector(".method"), colour = root.querySelector(".colour"),
        snap = root.querySelector(".snap"), iter = root.querySelector(".iter"), plot = root.querySelector(".plot");
  Object.keys(DATA.runs).forEach(k => method.add(new Option(k, k)));
  function colourings(run) {
    const c = ["true class", "prediction", "error"];
    if (run.snapshots.some(s => s.sigma)) c.push("sigma2");
    return c;
  }
  function setMethod() {
    const run = DATA.runs[method.value];
    const keep = colour.value;
    colour.innerHTML = "";
    colourings(run).forEach(c => colour.add(new Option(c, c)));
    if (colourings(run).includes(keep)) colour.value = keep;
    snap.max = run.snapshots.length - 1;
    if (+snap.value > +snap.max) snap.value = snap.max;
    draw();
  }
  function draw() {
    const run = DATA.runs[method.value], s = run.snapshots[+snap.value], mode = colour.value;
    iter.textContent = "iteration " + s.iteration;
    const traces = run.names.map((name, k) => {
      const idx = run.label.map((l, i) => l === k ? i : -1).filter(i => i >= 0);
      let col;
      if (mode === "true class") col = run.colours[k];
      else if (mode === "prediction") col = idx.map(i => run.colours[s.pred[i]]);
      else if (mode === "error") col = idx.map(i => s.pred[i] === k ? run.correct : run.error);
      else col = idx.map(i => s.sigma[i]);
      const marker = {size: 5, color: col};
      if (mode === "sigma2") { marker.colorscale = "Viridis"; marker.showscale = k === 0;
        marker.colorbar = {title: "σ²"}; marker.cmin = Math.min(...s.sigma); marker.cmax = Math.max(...s.sigma); }
      return {type: "scattergl", mode: "markers", name: name, legendgroup: name, x: idx.map(i => s.x[i]),
              y: idx.map(i => s.y[i]), marker: marker, hovertemplate: name + "<extra></extra>"};
    });
    const pk = s.protos.map((p, k) => p[0] === null ? -1 : k).filter(k => k >= 0);
    traces.push({type: "scatter", mode: "markers", name: "prototypes", x: pk.map(k => s.protos[k][0]),
                 y: pk.map(k => s.protos[k][1]), text: pk.map(k => run.names[k]),
                 marker: {symbol: "x", size: 13, color: pk.map(k => run.colours[k]), line: {width: 2, color: "black"}},
                 hovertemplate: "prototype %%{text}<extra></extra>"});
    Plotly.react(plot, traces, {title: {text: method.value + " | iteration " + s.iteration + " | " + mode, x: 0.02},
      xaxis: {visible: false}, yaxis: {visible: false, scaleanchor: "x"}, legend: {title: {text: "class"}},
      margin: {l: 10, r: 10, t: 40, b: 10}}, {responsive: true, displaylogo: false});
    root.dataset.drawn = method.value + "|" + s.iteration + "|" + mode;
  }
  method.addEventListener("change", setMethod);
  colour.addEventListener("change", draw);
  snap.addEventListener("input", draw);
  const first = DATA.runs[method.value];
  snap.value = first.snapshots.length - 1;
  setMethod();
})();
</script>
"""


def explorer_html(runs: dict, element_id: str = "s4kit-explorer", include_plotlyjs: bool = True) -> str:
    """An HTML fragment (plotly.js inlined when ``include_plotlyjs``) that explores ``runs``
    (the output of ``load_explorer_runs``) in any browser, without a kernel.

    Raises:
        ValueError: ``runs`` is empty.
    """
    if not runs:
        raise ValueError("no runs to explore")
    script = ""
    if include_plotlyjs:
        from plotly.offline import get_plotlyjs

        script = f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n"
    data = json.dumps(explorer_data(runs), separators=(",", ":"))
    return script + _PAGE % {"id": element_id, "data": data}


def write_explorer(runs: dict, path: str | Path) -> Path:
    """A standalone HTML page of ``explorer_html(runs)`` at ``path`` (written atomically)."""
    from ..io import atomic_write_text

    path = Path(path)
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>s4kit latent-space explorer</title>"
            "</head><body>" + explorer_html(runs) + "</body></html>")
    atomic_write_text(path, page)
    return path
