"""Attention weights as one self-contained HTML page: point at a token to see where it looks.

The page holds the weights as JSON and a few lines of JavaScript, nothing fetched from the
network, so it opens from the disk in any browser. Pick a layer and a head (or the mean of
the heads); hovering a token shades every token by the weight it gets from it; a click keeps
that token chosen until the next click.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from minibert.machinery.files import atomic_write

PAGE = """<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 2em; }
#tokens span { display: inline-block; margin: 0.15em; padding: 0.25em 0.4em; border: 1px solid #ccc; border-radius: 4px; cursor: pointer; }
#tokens span.query { border: 2px solid #d62728; }
#weights { color: #555; margin-top: 1em; font-size: 0.9em; }
</style></head>
<body>
<h2>__TITLE__</h2>
<p>Layer <select id="layer"></select> head <select id="head"></select>.
Point at a token (click to keep it): the others are shaded by how much it looks at them.</p>
<div id="tokens"></div><div id="weights"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const L = data.weights.length, H = data.weights[0].length, T = data.tokens.length;
const layer = document.getElementById("layer"), head = document.getElementById("head");
for (let l = 0; l < L; l++) layer.add(new Option(String(l + 1), l));
head.add(new Option("mean of the heads", -1));
for (let h = 0; h < H; h++) head.add(new Option(String(h + 1), h));
const box = document.getElementById("tokens"), spans = [];
let pinned = null;
function row(i) {
  const l = Number(layer.value), h = Number(head.value);
  if (h >= 0) return data.weights[l][h][i];
  return data.weights[l][0][i].map((_, j) => data.weights[l].reduce((s, w) => s + w[i][j], 0) / H);
}
function show(i) {
  spans.forEach((s, j) => { s.style.background = ""; s.className = ""; s.title = ""; });
  if (i === null) { document.getElementById("weights").textContent = ""; return; }
  const w = row(i);
  spans.forEach((s, j) => { s.style.background = `rgba(31, 119, 180, ${w[j]})`; s.title = w[j].toFixed(3); });
  spans[i].className = "query";
  document.getElementById("weights").textContent = data.tokens[i] + " looks at: " +
    w.map((x, j) => [x, data.tokens[j]]).sort((a, b) => b[0] - a[0]).slice(0, 5).map(p => `${p[1]} ${p[0].toFixed(2)}`).join(", ");
}
data.tokens.forEach((token, i) => {
  const s = document.createElement("span");
  s.textContent = token;
  s.onmouseenter = () => { if (pinned === null) show(i); };
  s.onmouseleave = () => { if (pinned === null) show(null); };
  s.onclick = () => { pinned = pinned === i ? null : i; show(pinned === null ? i : pinned); };
  box.appendChild(s); spans.push(s);
});
layer.onchange = head.onchange = () => show(pinned);
</script></body></html>
"""


def attention_page(weights: Tensor, labels: Sequence[str], title: str) -> str:
    """The HTML page for the (L, H, T, T) weights of one sentence's tokens."""
    data = {"tokens": list(labels), "weights": weights.float().round(decimals=4).tolist()}
    # "</" inside the JSON would end the <script> element early; "<\\/" reads back the same.
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)


def write_attention_page(path: str | Path, weights: Tensor, labels: Sequence[str], title: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, encoding="utf-8") as file:
        file.write(attention_page(weights, labels, title))
