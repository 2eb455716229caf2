"""The status page served at `/`: static HTML plus a script that polls /api/status."""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>local-ai</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #ddd; }
.ready { color: #18794e; } .loading { color: #a35200; } .error { color: #c62828; }
code { background: #f3f3f3; padding: 0 .25rem; }
</style>
</head>
<body>
<h1>local-ai</h1>
<p>Engine: <strong id="engine">…</strong> <span id="reason"></span></p>
<p>OpenAI base URL: <code id="openai"></code> · Anthropic base URL: <code id="anthropic"></code></p>
<table>
<thead><tr><th>Alias</th><th>Loaded</th><th>Memory</th><th>Context</th></tr></thead>
<tbody id="models"></tbody>
</table>
<p id="requests"></p>
<script src="/app.js"></script>
</body>
</html>
"""

PAGE_JS = """"use strict";
function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
async function refresh() {
  try {
    const s = await (await fetch("/api/status")).json();
    const engine = document.getElementById("engine");
    engine.textContent = s.engine.state;
    const state = s.engine.state;
    engine.className = state === "ready" ? "ready" : (state === "error" ? "error" : "loading");
    document.getElementById("reason").textContent = s.engine.reason || "";
    document.getElementById("openai").textContent = s.url + "/v1";
    document.getElementById("anthropic").textContent = s.url + "/anthropic";
    const body = document.getElementById("models");
    body.replaceChildren(...s.models.map((m) => {
      const tr = document.createElement("tr");
      const memory = m.memory_bytes ? (m.memory_bytes / 1e9).toFixed(2) + " GB" : "";
      tr.append(cell(m.alias + (m.default ? " (default)" : "")), cell(m.loaded ? "yes" : "no"),
        cell(memory), cell(String(m.context)));
      return tr;
    }));
    const r = s.requests;
    document.getElementById("requests").textContent =
      `${r.active} generating, ${r.queued} waiting, ${r.generations} served since start`;
  } catch (e) {
    document.getElementById("engine").textContent = "unreachable";
  }
}
refresh();
setInterval(refresh, 2000);
"""
