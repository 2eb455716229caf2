// local-ai's page: server status, a chat against any alias, load errors.
// Model output is untrusted: it only ever reaches the DOM through textContent / text nodes.
"use strict";

const POLL_MS = 2000;
const STATUS_TIMEOUT_MS = 5000; // a server that stopped answering counts as down
const KEY_STORAGE = "local-ai-api-key";

const $ = (id) => document.getElementById(id);

const ui = {
  status: null, // last /api/status answer
  reachable: true,
  pid: null,
  selected: null, // alias chosen in the dropdown
  loadErrors: {}, // alias -> error text seen from /api/load or a chat request
  history: [], // {role, content} of the current conversation
  controller: null, // AbortController of the running generation
  loadTimer: null,
};

// --- small helpers ------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function formatBytes(n) {
  if (n === null || n === undefined) return "";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(0) + " kB";
  return n + " B";
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  const h = Math.floor(s / 3600);
  return h + " h " + Math.floor((s % 3600) / 60) + " min";
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) headers.authorization = "Bearer " + key;
  return headers;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    const err = body && body.error;
    if (typeof err === "string") return err;
    if (err && typeof err.message === "string") return err.message;
    return JSON.stringify(body);
  } catch (e) {
    return "HTTP " + response.status;
  }
}

function modelInfo(alias) {
  const models = (ui.status && ui.status.models) || [];
  return models.find((m) => m.alias === alias) || null;
}

// --- status -------------------------------------------------------------------------------

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

function engineClass(state) {
  if (state === "ready") return "ready";
  if (state === "error") return "error";
  return "loading";
}

// A small SVG line chart of `values` (numbers; null leaves a gap in the title only).
function lineChart(values, label, format, cls) {
  const shown = values.filter((v) => typeof v === "number");
  if (shown.length === 0) return document.createTextNode("");
  const ns = "http://www.w3.org/2000/svg";
  const w = cls === "spark" ? 96 : 240, h = cls === "spark" ? 24 : 48, pad = 2;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  const max = Math.max(...shown), min = cls === "spark" ? Math.min(...shown) : 0;
  const span = max - min || 1;
  const coords = shown.map((v, i) => {
    const x = shown.length === 1 ? w / 2 : pad + (i * (w - 2 * pad)) / (shown.length - 1);
    const y = h - pad - ((v - min) / span) * (h - 2 * pad);
    return [x.toFixed(1), y.toFixed(1)];
  });
  const title = document.createElementNS(ns, "title");
  title.textContent = label + ": " + shown.map(format).join(", ");
  svg.setAttribute("aria-label", title.textContent);
  svg.appendChild(title);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", coords.map((c) => c.join(",")).join(" "));
  svg.appendChild(line);
  const last = coords[coords.length - 1];
  const dot = document.createElementNS(ns, "circle");
  dot.setAttribute("cx", last[0]);
  dot.setAttribute("cy", last[1]);
  dot.setAttribute("r", "2");
  svg.appendChild(dot);
  return svg;
}

function sparkline(points) {
  return lineChart(points.map((p) => p.tok_s), "decode tok/s", (v) => v.toFixed(1), "spark");
}

const ACTIVITY = [
  ["chart-throughput", "tokens_per_s", "tok/s", (v) => v.toFixed(1)],
  ["chart-ttft", "ttft_s", "TTFT ms", (v) => (v * 1000).toFixed(0)],
  ["chart-cache", "cache_hit", "cache hits %", (v) => (v * 100).toFixed(0)],
];

// The last hour, per minute, as the server keeps it (`activity` in /api/status).
function renderActivity(activity) {
  const box = $("activity");
  const minutes = (activity && activity.minutes) || [];
  box.hidden = minutes.length === 0;
  if (box.hidden) return;
  for (const [id, key, label, format] of ACTIVITY) {
    $(id).replaceChildren(lineChart(minutes.map((m) => m[key]), label, format, "chart"));
  }
  const hour = activity.hour || {};
  const parts = [`${(hour.tokens_per_s || 0).toFixed(2)} tok/s`];
  if (hour.ttft_s !== null && hour.ttft_s !== undefined) parts.push(`TTFT ${(hour.ttft_s * 1000).toFixed(0)} ms`);
  if (hour.cache_hit !== null && hour.cache_hit !== undefined) parts.push(`cache hits ${(hour.cache_hit * 100).toFixed(0)}%`);
  $("activity-summary").textContent = "Over the hour: " + parts.join(", ");
}

function modelState(m) {
  const error = m.error || ui.loadErrors[m.alias];
  if (m.loaded) return { text: "loaded" + (m.memory_bytes ? ", " + formatBytes(m.memory_bytes) : ""), cls: "ready" };
  if (m.loading) return { text: "loading…", cls: "loading" };
  if (error) return { text: "failed to load", cls: "error", error };
  return { text: "not loaded", cls: "muted" };
}

// A sharded alias: its group's state and, per rank, host, pid, state and last error.
function groupInfo(group) {
  const box = el("div", "group");
  const why = group.state !== "ready" && group.reason ? ": " + group.reason : "";
  const cls = group.state === "ready" ? "ready" : group.state === "error" ? "error" : "loading";
  box.append(el("div", cls, `${group.parallel} group ${group.state}${why}`));
  for (const rank of group.ranks || []) {
    const line = `rank ${rank.rank} on ${rank.host}: pid ${rank.pid || "–"}, ${rank.state}` +
      (rank.last_error ? ` (${rank.last_error})` : "");
    box.append(el("div", rank.last_error ? "state-error" : "muted", line));
  }
  return box;
}

function renderModels(models) {
  const rows = models.map((m) => {
    const tr = el("tr");
    tr.dataset.alias = m.alias;
    const alias = el("td");
    alias.append(el("strong", "", m.alias));
    if (m.default) alias.append(" ", el("span", "muted", "(default)"));
    if (m.name && m.name !== m.alias) alias.append(el("div", "muted", m.name));
    const state = modelState(m);
    const stateCell = el("td", "state");
    stateCell.append(el("span", state.cls, state.text));
    if (state.error) stateCell.append(el("div", "state-error", state.error));
    if (m.group) stateCell.append(groupInfo(m.group));
    const bench = (m.benchmarks || []).slice(-1)[0];
    const benchText = bench
      ? [bench.tok_s != null ? bench.tok_s.toFixed(1) + " tok/s" : "",
         bench.ttft_s != null ? "TTFT " + (bench.ttft_s * 1000).toFixed(0) + " ms" : ""]
          .filter(Boolean).join(", ")
      : "—";
    const chart = el("td");
    chart.append(sparkline(m.benchmarks || []));
    tr.append(
      alias,
      el("td", "", m.source || "—"),
      el("td", "", m.format || ""),
      el("td", "", m.quantization || "—"),
      el("td", "num", formatBytes(m.size_bytes)),
      el("td", "num", m.context != null ? m.context.toLocaleString("en-US") : ""),
      stateCell,
      el("td", "num", benchText),
      chart,
    );
    return tr;
  });
  $("models").replaceChildren(...rows);
}

function renderDropdown(models) {
  const select = $("model");
  const aliases = models.map((m) => m.alias);
  const current = Array.from(select.options).map((o) => o.value);
  if (aliases.join("\n") !== current.join("\n")) {
    select.replaceChildren(...models.map((m) => {
      const option = el("option", "", m.alias + (m.default ? " (default)" : ""));
      option.value = m.alias;
      return option;
    }));
  }
  if (!ui.selected || !aliases.includes(ui.selected)) {
    const preferred = models.find((m) => m.default) || models[0];
    ui.selected = preferred ? preferred.alias : null;
  }
  if (ui.selected) select.value = ui.selected;
  select.disabled = aliases.length === 0 || Boolean(ui.controller);
}

function renderLoadError() {
  const alias = ui.selected;
  const m = modelInfo(alias);
  const error = (m && !m.loaded && !m.loading && m.error) || ui.loadErrors[alias];
  const box = $("load-error");
  if (!error || (m && m.loaded)) {
    box.hidden = true;
    return;
  }
  $("load-error-alias").textContent = alias;
  $("load-error-text").textContent = error;
  $("load-error-log").textContent = (ui.status && ui.status.logs && ui.status.logs.engine) || "logs/engine.log";
  $("load-error-verify").textContent = "local-ai models verify " + alias;
  box.hidden = false;
}

function renderModelState() {
  if (ui.loadTimer) return; // a load in progress writes its own text
  const m = modelInfo(ui.selected);
  const out = $("model-state");
  if (!m) {
    out.textContent = "";
    return;
  }
  const state = modelState(m);
  out.textContent = state.text;
  out.className = state.cls;
}

function render(status) {
  $("version").textContent = "v" + status.version;
  const engine = status.engine || {};
  const badge = $("engine");
  badge.textContent = "engine: " + (engine.state || "unknown");
  badge.className = "badge " + engineClass(engine.state);
  $("uptime").textContent = "up " + formatDuration(status.uptime_s);
  const reason = $("engine-reason");
  const why = engine.state !== "ready" ? engine.reason || engine.last_exit || "" : "";
  reason.textContent = why ? "Engine " + engine.state + ": " + why : "";
  reason.hidden = !why;
  const restarts = $("engine-restarts");
  restarts.textContent = engine.restarts
    ? `The engine restarted ${engine.restarts} time${engine.restarts > 1 ? "s" : ""}` +
      (engine.last_exit ? ` (last: ${engine.last_exit}).` : ".")
    : "";
  restarts.hidden = !engine.restarts;
  $("url-openai").textContent = status.url + "/v1";
  $("url-anthropic").textContent = status.url + "/anthropic";
  renderModels(status.models || []);
  renderDropdown(status.models || []);
  renderModelState();
  renderLoadError();
  const r = status.requests || {};
  $("requests").textContent =
    `${r.active || 0} generating, ${r.queued || 0} waiting, ${r.generations || 0} generations since start`;
  renderActivity(status.activity);
  $("key-form").hidden = !(status.auth && !apiKey());
}

async function refresh() {
  try {
    const response = await fetch("/api/status", {
      cache: "no-store",
      headers: authHeaders(),
      signal: AbortSignal.timeout(STATUS_TIMEOUT_MS),
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const status = await response.json();
    if (ui.pid !== null && status.pid !== ui.pid) {
      showBanner("The server restarted (pid " + status.pid + "); the page reconnected.");
    } else if (!ui.reachable) {
      showBanner("");
    }
    ui.reachable = true;
    ui.pid = status.pid;
    ui.status = status;
    render(status);
  } catch (e) {
    ui.reachable = false;
    const badge = $("engine");
    badge.textContent = "server unreachable";
    badge.className = "badge error";
    showBanner("The server does not answer; retrying every " + POLL_MS / 1000 + " s. Start it with `local-ai server start`.");
  }
}

// --- loading a model ----------------------------------------------------------------------

function startLoadTimer(alias) {
  stopLoadTimer();
  const started = performance.now();
  const out = $("model-state");
  const tick = () => {
    out.textContent = `loading ${alias}… ${((performance.now() - started) / 1000).toFixed(1)} s`;
    out.className = "loading";
  };
  tick();
  ui.loadTimer = setInterval(tick, 100);
  return started;
}

function stopLoadTimer(text, cls) {
  if (ui.loadTimer) clearInterval(ui.loadTimer);
  ui.loadTimer = null;
  if (text !== undefined) {
    $("model-state").textContent = text;
    $("model-state").className = cls || "muted";
  }
}

async function ensureLoaded(alias) {
  const m = modelInfo(alias);
  if (!m || m.loaded) return;
  const started = startLoadTimer(alias);
  try {
    const response = await fetch("/api/load", {
      method: "POST",
      headers: authHeaders({ "content-type": "application/json" }),
      body: JSON.stringify({ model: alias }),
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (response.status === 401) {
      askForKey("The API key was not accepted.");
      stopLoadTimer("", "muted");
      return;
    }
    const result = response.ok ? await response.json() : { loaded: false, error: await errorMessage(response) };
    if (!result.loaded) {
      ui.loadErrors[alias] = result.error || "unknown error";
      if (ui.selected === alias) stopLoadTimer(`failed to load after ${seconds} s`, "error");
    } else {
      delete ui.loadErrors[alias];
      if (ui.selected === alias) stopLoadTimer(`loaded in ${seconds} s`, "ready");
    }
  } catch (e) {
    stopLoadTimer("could not reach the server", "error");
  }
  renderLoadError();
  refresh();
}

// --- chat ---------------------------------------------------------------------------------

// Text with ``` fences becomes text nodes and <pre><code> blocks; nothing is parsed as HTML.
function renderReply(container, text) {
  const parts = text.split("```");
  const nodes = parts.map((part, i) => {
    if (i % 2 === 0) return document.createTextNode(part);
    const newline = part.indexOf("\n");
    const lang = newline >= 0 ? part.slice(0, newline).trim() : "";
    const body = newline >= 0 && /^[\w+#.-]*$/.test(lang) ? part.slice(newline + 1) : part;
    const pre = el("pre");
    const code = el("code", "", body);
    if (lang && /^[\w+#.-]+$/.test(lang)) code.dataset.lang = lang;
    pre.append(code);
    return pre;
  });
  container.replaceChildren(...nodes);
}

function addMessage(role, label) {
  const box = el("div", "msg " + role);
  box.append(el("div", "who", label));
  const thinking = el("div", "thinking");
  thinking.hidden = true;
  const body = el("div", "body");
  const stats = el("div", "stats");
  box.append(thinking, body, stats);
  $("messages").append(box);
  return { box, thinking, body, stats };
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("model").disabled = busy;
}

function askForKey(note) {
  sessionStorage.removeItem(KEY_STORAGE);
  $("key-note").textContent = note;
  $("key-form").hidden = false;
  $("key-input").focus();
}

async function send() {
  const prompt = $("prompt");
  const text = prompt.value.trim();
  const alias = ui.selected;
  if (!text || !alias || ui.controller) return;
  prompt.value = "";
  const userMsg = addMessage("user", "you");
  userMsg.body.textContent = text;
  ui.history.push({ role: "user", content: text });
  const reply = addMessage("assistant", alias);
  reply.box.setAttribute("aria-busy", "true");

  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...ui.history);
  const request = { model: alias, messages, stream: true, stream_options: { include_usage: true } };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) request.max_tokens = maxTokens;
  const temperature = parseFloat($("temperature").value);
  if (temperature >= 0) request.temperature = temperature;

  const m = modelInfo(alias);
  const wasLoaded = Boolean(m && m.loaded);
  const controller = new AbortController();
  ui.controller = controller;
  setBusy(true);
  const started = startLoadTimerIf(!wasLoaded, alias);
  let first = null, content = "", thinking = "", usage = null, pieces = 0, outcome = "done";
  let pending = false;
  const paint = () => {
    pending = false;
    renderReply(reply.body, content);
    reply.thinking.textContent = thinking;
    reply.thinking.hidden = !thinking;
  };
  const schedule = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(paint);
    }
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "content-type": "application/json" }),
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (response.status === 401) {
      askForKey("The API key was not accepted; enter it again.");
      throw new Error(await errorMessage(response));
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message || JSON.stringify(event.error));
        if (event.usage) usage = event.usage;
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        if (!delta) continue;
        const reasoning = delta.reasoning_content || delta.reasoning || "";
        const piece = delta.content || "";
        if ((piece || reasoning) && first === null) {
          first = performance.now();
          if (!wasLoaded) stopLoadTimer(`loaded in ${((first - started) / 1000).toFixed(1)} s`, "ready");
        }
        if (reasoning) thinking += reasoning;
        if (piece) {
          content += piece;
          pieces += 1;
        }
        if (piece || reasoning) schedule();
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      outcome = "stopped";
    } else {
      outcome = "failed";
      const message = e.message || String(e);
      reply.box.append(el("div", "failed", message));
      if (/load/i.test(message)) {
        ui.loadErrors[alias] = message;
        renderLoadError();
      }
    }
  } finally {
    const ended = performance.now();
    if (!wasLoaded && first === null) stopLoadTimer(outcome === "failed" ? "failed" : "", outcome === "failed" ? "error" : "muted");
    ui.controller = null;
    setBusy(false);
    paint();
    reply.box.removeAttribute("aria-busy");
    reply.box.dataset.outcome = outcome;
    if (content) ui.history.push({ role: "assistant", content });
    const parts = [];
    if (first !== null) {
      parts.push("TTFT " + ((first - started) / 1000).toFixed(2) + " s");
      const tokens = (usage && usage.completion_tokens) || pieces;
      const seconds = (ended - first) / 1000;
      if (tokens > 1 && seconds > 0) parts.push(((tokens - 1) / seconds).toFixed(1) + " tok/s");
      parts.push(tokens + " tokens");
    }
    if (outcome === "stopped") parts.push("stopped");
    reply.stats.textContent = parts.join(" · ");
    refresh();
  }
}

function startLoadTimerIf(loading, alias) {
  return loading ? startLoadTimer(alias) : performance.now();
}

function stop() {
  if (ui.controller) ui.controller.abort();
}

function newChat() {
  stop();
  ui.history = [];
  $("messages").replaceChildren();
  $("prompt").focus();
}

async function useKey(key) {
  if (!key) return;
  try {
    const check = await fetch("/v1/models", { headers: { authorization: "Bearer " + key } });
    if (check.status === 401) {
      askForKey("That key was not accepted; try again.");
      return;
    }
  } catch (e) {
    // The server is down: keep the key, the next request tells.
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  refresh();
}

// --- wiring -------------------------------------------------------------------------------

function init() {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.controller) {
      event.preventDefault();
      stop();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("model").addEventListener("change", (event) => {
    ui.selected = event.target.value;
    stopLoadTimer();
    renderModelState();
    renderLoadError();
    ensureLoaded(ui.selected);
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    useKey($("key-input").value.trim());
  });
  refresh();
  setInterval(refresh, POLL_MS);
}

init();
