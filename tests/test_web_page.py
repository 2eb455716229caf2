"""The page at `/` in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
the real daemon and tiny models: status, the alias dropdown, streamed chat, stop, load errors,
hostile model output, the API key prompt and an engine crash.

CI (CI=1 or LOCAL_AI_REQUIRE_BROWSER=1) fails when Chromium is missing; elsewhere these tests are
skipped with the reason. Screenshots go to $LOCAL_AI_TEST_ARTIFACTS/web (else a pytest temp dir).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from tests.harness import tinymodels as tm
from tests.server_helpers import (
    Daemon,
    build_chat_model,
    build_one_layer_with_text_token,
    free_port,
    write_manifest,
)

API_KEY = "web-test-key-0123456789"
# What the scripted model answers: markup that must stay text, and a fenced block shown as code.
HOSTILE = (
    '<img src=x onerror="window.__pwned=1"><b>bold?</b>\n'
    "```html\n<script>window.__pwned=2</script>\n```\n"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("LOCAL_AI_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _require_browser() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("LOCAL_AI_REQUIRE_BROWSER"))


def build_scripted_model(out: Path, text: str) -> Path:
    """A qwen3 tiny model that answers every prompt with exactly `text`, then stops.

    As in tests.server_helpers.build_tool_model: attention and MLP outputs are zeroed so the next
    token depends only on the current one; after the prompt's final "\\n" comes one added token
    holding `text`, then `<|im_end|>`.
    """
    if (out / "config.json").exists():
        return out
    text_id = build_one_layer_with_text_token(out, text)

    from tokenizers import Tokenizer

    newline = Tokenizer.from_file(str(out / "tokenizer.json")).encode("\n").ids
    assert len(newline) == 1, newline
    weights, _ = tm.load_safetensors(out / "model.safetensors")
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name][:] = 0.0
    weights["model.norm.weight"][:] = 1.0
    embed = weights["model.embed_tokens.weight"]
    unit = embed / np.sqrt((embed**2).mean(axis=1, keepdims=True) + 1e-6)
    head = np.zeros_like(weights["lm_head.weight"])
    chain = [newline[0], text_id, tm.token_id("qwen3", "<|im_end|>")]
    for current, following in itertools.pairwise(chain):
        head[following] += 20.0 * unit[current]
    weights["lm_head.weight"] = head
    tm.save_safetensors(out / "model.safetensors", weights)
    return out


def build_broken_model(out: Path, like: Path) -> Path:
    """A model directory whose config and tokenizer are fine but whose weights are garbage."""
    out.mkdir(parents=True, exist_ok=True)
    for item in like.iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, out / item.name)
    (out / "model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file " * 64)
    return out


def write_benchmarks(
    home: Path, alias: str, model_dir: Path, points: list[tuple[float, float]]
) -> None:
    """Benchmark results in state.json as `local-ai bench` records them (decode tok/s, TTFT)."""
    records = [
        {
            "alias": alias,
            "model_path": str(model_dir),
            "at": 1_790_000_000 + i,
            "levels": [
                {
                    "concurrency": 1,
                    "decode_tps_per_stream": {"median": tps, "min": tps, "max": tps},
                    "ttft_s": {"median": ttft, "min": ttft, "max": ttft},
                }
            ],
        }
        for i, (tps, ttft) in enumerate(points)
    ]
    home.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "serial": 1, "models": {}, "benchmarks": records}
    (home / "state.json").write_text(json.dumps(state))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if _chromium() is None and not _require_browser():
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    root = tmp_path_factory.mktemp("web")
    tiny = build_chat_model(root / "tiny")
    models = {
        "tiny": tiny,
        "hostile": build_scripted_model(root / "hostile", HOSTILE),
        "broken": build_broken_model(root / "broken", tiny),
    }
    port = free_port()
    manifest = write_manifest(
        root,
        port=port,
        models=models,
        context=2048,
        server_extra='api_key_env = "LOCAL_AI_WEB_TEST_KEY"\npreload = ["tiny"]',
        engine_extra="max_loaded_models = 3",
    )
    write_benchmarks(root / "home", "tiny", tiny, [(41.0, 0.2), (52.5, 0.15), (48.0, 0.18)])
    d = Daemon(
        home=root / "home",
        manifest=manifest,
        port=port,
        extra_env={"LOCAL_AI_WEB_TEST_KEY": API_KEY},
    )
    with d.running():
        yield d


@pytest.fixture(scope="module")
def browser(daemon: Daemon) -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.fail("chromium is required here (CI): apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("LOCAL_AI_TEST_ARTIFACTS")
    out = Path(base) / "web" if base else tmp_path_factory.mktemp("web-screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class Page:
    """A browser tab on the page, with everything it logged and requested."""

    page: Any
    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    expected_errors: tuple[str, ...] = ()  # console errors a test provokes on purpose

    def open(self, *, key: bool = True) -> Any:
        response = self.page.goto(self.url + "/")
        self.page.wait_for_selector("#models tr")
        if key:
            self.page.fill("#key-input", API_KEY)
            self.page.click("#key-form button")
            self.page.wait_for_selector("#key-form", state="hidden")
        return response

    def status(self, *, key: bool = True) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {API_KEY}"} if key else {}
        url = self.url + "/api/status"
        return dict(httpx.get(url, headers=headers, timeout=30, trust_env=False).json())

    def select(self, alias: str) -> None:
        self.page.select_option("#model", alias)

    def say(self, text: str, *, max_tokens: int | None = None) -> Any:
        """Type `text` and press Enter (greedy decoding); the new reply's element."""
        count = self.page.locator(".msg.assistant").count()
        if max_tokens is not None:
            self.page.fill("#max-tokens", str(max_tokens))
        self.page.fill("#temperature", "0")
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")
        reply = self.page.locator(".msg.assistant").nth(count)
        reply.wait_for()
        return reply


@pytest.fixture
def tab(
    browser: Any, daemon: Daemon, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # Generous: an engine start or model load on a loaded 2-core CI machine can take tens of
    # seconds; a passing test never waits this long.
    page.set_default_timeout(60_000)
    t = Page(page=page, url=daemon.url)
    page.on("console", lambda m: t.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: t.console_errors.append(f"page error: {e}"))
    page.on("request", lambda r: t.requests.append(r.url))
    try:
        yield t
        page.screenshot(path=str(artifacts / f"{request.node.name}.png"), full_page=True)
    finally:
        context.close()
    unexpected = [e for e in t.console_errors if not any(x in e for x in t.expected_errors)]
    assert unexpected == [], unexpected
    leaving = [u for u in t.requests if urlsplit(u).netloc != f"127.0.0.1:{daemon.port}"]
    assert leaving == [], leaving


# Records, on every change of the page, the longest reply text seen while the reply was busy.
STREAM_WATCH = """() => {
  window.__textWhileBusy = 0;
  new MutationObserver(() => {
    const body = document.querySelector('.msg.assistant[aria-busy=true] .body');
    if (body) window.__textWhileBusy = Math.max(window.__textWhileBusy, body.textContent.length);
  }).observe(document.body,
    {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def wait_status(tab: Page, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = tab.status()
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def model(status: dict[str, Any], alias: str) -> dict[str, Any]:
    return next(m for m in status["models"] if m["alias"] == alias)


# --- tests -----------------------------------------------------------------------------------


def test_page_loads_with_csp_and_shows_status(tab: Page, daemon: Daemon) -> None:
    response = tab.open(key=False)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    page = tab.page
    # The API key is asked for once and kept in this tab's session storage only.
    page.wait_for_selector("#key-form", state="visible")
    page.fill("#key-input", API_KEY)
    page.click("#key-form button")
    # The page checks the key against /v1/models before keeping it: wait for that round trip.
    page.wait_for_function("() => sessionStorage.getItem('local-ai-api-key') !== null")
    assert page.evaluate("sessionStorage.getItem('local-ai-api-key')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    page.wait_for_function(
        "() => document.getElementById('engine').textContent === 'engine: ready'"
    )
    assert page.inner_text("#url-openai") == f"http://127.0.0.1:{daemon.port}/v1"
    assert page.inner_text("#url-anthropic") == f"http://127.0.0.1:{daemon.port}/anthropic"
    rows = page.locator("#models tr")
    assert [rows.nth(i).get_attribute("data-alias") for i in range(rows.count())] == [
        "broken",
        "hostile",
        "tiny",
    ]
    # tiny is preloaded: the table says so once the engine has it.
    page.wait_for_function(
        "() => document.querySelector('#models tr[data-alias=tiny] td.state').textContent"
        ".startsWith('loaded')"
    )
    tiny_row = page.inner_text("#models tr[data-alias=tiny]")
    assert "(default)" in tiny_row and "2,048" in tiny_row and "mlx" in tiny_row
    assert "not loaded" in page.inner_text("#models tr[data-alias=hostile]")
    # The last benchmark, and the history drawn as an SVG sparkline by the page.
    assert "48.0 tok/s, TTFT 180 ms" in tiny_row
    line = page.locator("#models tr[data-alias=tiny] svg.spark polyline")
    assert len(line.get_attribute("points").split()) == 3
    assert "41.0, 52.5, 48.0" in page.locator("#models tr[data-alias=tiny] svg title").inner_html()
    assert page.inner_text("#version").startswith("v")


def test_dropdown_lists_the_aliases_with_the_default_selected(tab: Page) -> None:
    tab.open()
    options = tab.page.locator("#model option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == [
        "broken",
        "hostile",
        "tiny",
    ]
    assert tab.page.input_value("#model") == "tiny"
    page = tab.page
    # Shift+Enter adds a line instead of sending.
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    assert page.input_value("#prompt") == "first line\n"
    assert page.locator(".msg").count() == 0
    # A narrow window: nothing but the models table (which scrolls) is wider than the screen.
    page.set_viewport_size({"width": 400, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    assert page.is_visible("#send") and page.is_visible("#model")


def test_a_message_streams_a_reply(tab: Page) -> None:
    tab.open()
    page = tab.page
    # Text shows up while the reply is still being generated: an observer records every change of
    # the page, so a busy machine that paints rarely (or a poll that misses it) cannot hide it.
    page.evaluate(STREAM_WATCH)
    reply = tab.say("Hello there, how are you?", max_tokens=400)
    page.wait_for_selector(".msg.assistant[data-outcome]", timeout=90_000)
    ended = reply.evaluate(
        "b => ({outcome: b.dataset.outcome, text: b.innerText.slice(0, 300),"
        " seen: window.__textWhileBusy})"
    )
    assert ended["outcome"] == "done", ended
    assert ended["seen"] > 0, ended
    assert len(reply.locator(".body").inner_text()) > 0
    stats = reply.locator(".stats").inner_text()
    assert "TTFT" in stats and "tok/s" in stats and "400 tokens" in stats, stats
    # A second turn sends the system prompt and the conversation so far; "New chat" clears it.
    page.click(".system summary")
    page.fill("#system", "Answer briefly.")
    with page.expect_request("**/v1/chat/completions") as sent:
        second = tab.say("And again?", max_tokens=8)
    body = json.loads(sent.value.post_data)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "Answer briefly."
    assert body["model"] == "tiny" and body["stream"] is True and body["max_tokens"] == 8
    page.wait_for_function(
        "() => document.querySelectorAll('.msg.assistant[data-outcome=done]').length === 2"
    )
    assert "8 tokens" in second.locator(".stats").inner_text()
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0


def test_stop_cancels_the_generation_and_the_page_stays_live(tab: Page) -> None:
    tab.open()
    page = tab.page
    reply = tab.say("Write a very long story.", max_tokens=4000)
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant[aria-busy=true] .body')"
        "?.textContent.length > 0"
    )
    # The status poll keeps answering while the engine generates.
    page.wait_for_function(
        "() => document.getElementById('requests').textContent.startsWith('1 generating')"
    )
    page.keyboard.press("Escape")
    page.wait_for_selector(".msg.assistant[data-outcome=stopped]")
    assert "stopped" in reply.locator(".stats").inner_text()
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    status = wait_status(tab, lambda s: s["requests"]["active"] == 0, timeout=60)
    assert status["requests"]["active"] == 0
    # The stop button does the same.
    tab.say("Another long one.", max_tokens=4000)
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant[aria-busy=true] .body')"
        "?.textContent.length > 0"
    )
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelectorAll('.msg.assistant[data-outcome=stopped]').length === 2"
    )


def test_a_model_that_fails_to_load_shows_its_error_and_the_commands(
    tab: Page, daemon: Daemon
) -> None:
    tab.open()
    page = tab.page
    tab.select("broken")
    page.wait_for_selector("#load-error", state="visible")
    error_text = page.inner_text("#load-error-text")
    assert error_text.strip(), "the engine's error text is shown"
    box = page.inner_text("#load-error")
    assert "local-ai server logs" in box and "local-ai models verify broken" in box
    assert page.inner_text("#load-error-log") == str(daemon.home / "logs" / "engine.log")
    assert "failed to load" in page.inner_text("#model-state")
    # The engine's own record of the failure reaches the table, from /api/status.
    status = wait_status(tab, lambda s: model(s, "broken")["error"])
    assert model(status, "broken")["error"] in error_text
    # Without the API key the status says only that it failed: the text names local files.
    anonymous = tab.status(key=False)
    assert "logs" not in anonymous
    assert str(daemon.home.parent) not in json.dumps(anonymous)
    assert model(anonymous, "broken")["error"]
    page.wait_for_function(
        "() => document.querySelector('#models tr[data-alias=broken]').textContent"
        ".includes('failed to load')"
    )
    # Choosing a good model again hides it.
    tab.select("tiny")
    page.wait_for_selector("#load-error", state="hidden")


def test_hostile_model_output_is_shown_as_text(tab: Page) -> None:
    tab.open()
    page = tab.page
    tab.select("hostile")
    page.wait_for_function(
        "() => document.getElementById('model-state').textContent.startsWith('loaded')"
    )
    # It was not loaded: the page asked the server to load it. The page then says how long that
    # took, unless its status poll already shows the model loaded with its size.
    assert any(url.endswith("/api/load") for url in tab.requests)
    state = page.inner_text("#model-state")
    assert re.fullmatch(r"loaded in \d+\.\d s|loaded, \d+ [kMG]B", state), state
    reply = tab.say("Say something nasty.")
    page.wait_for_selector(".msg.assistant[data-outcome=done]", timeout=90_000)
    body = reply.locator(".body")
    text = body.text_content()
    assert '<img src=x onerror="window.__pwned=1"><b>bold?</b>' in text, text
    assert body.locator("img, b, script").count() == 0
    # The fenced block is shown as code, its markup as text.
    assert body.locator("pre code").text_content() == "<script>window.__pwned=2</script>\n"
    assert page.evaluate("window.__pwned") is None
    assert not any(urlsplit(u).path == "/x" for u in tab.requests)


def test_an_engine_crash_is_shown_and_recovered_without_reloading(
    tab: Page, daemon: Daemon
) -> None:
    tab.open()
    page = tab.page
    page.wait_for_function(
        "() => document.getElementById('engine').textContent === 'engine: ready'"
    )
    engine_pid = tab.status()["engine"]["pid"]
    page.evaluate("window.__sameDocument = true")
    os.kill(engine_pid, signal.SIGKILL)
    page.wait_for_function(
        "() => document.getElementById('engine-restarts').textContent.includes('SIGKILL')"
    )
    page.wait_for_function(
        "() => document.getElementById('engine').textContent === 'engine: ready'", timeout=90_000
    )
    assert page.evaluate("window.__sameDocument") is True
    # A chat works again on the new engine (it reloads the model first).
    tab.say("Back?", max_tokens=4)
    page.wait_for_selector(".msg.assistant[data-outcome=done]", timeout=90_000)


def test_a_dead_server_and_a_restart_are_shown_and_recovered_without_reloading(
    tab: Page,
) -> None:
    """The gateway's side of a restart is the server tests'; this is the page's: polls that fail,
    then a status from another server process, are shown, and the page carries on."""
    tab.open()
    page = tab.page
    page.wait_for_function(
        "() => document.getElementById('engine').textContent === 'engine: ready'"
    )
    page.evaluate("window.__sameDocument = true")
    tab.expected_errors = ("net::ERR_CONNECTION_REFUSED",)
    page.route("**/api/status", lambda route: route.abort("connectionrefused"))
    page.wait_for_function(
        "() => document.getElementById('engine').textContent === 'server unreachable'"
    )
    assert "does not answer" in page.inner_text("#banner")

    def restarted(route: Any) -> None:
        response = route.fetch()
        status = response.json()
        status["pid"] += 1
        route.fulfill(response=response, json=status)

    page.unroute("**/api/status")
    page.route("**/api/status", restarted)
    page.wait_for_function(
        "() => document.getElementById('banner').textContent.includes('server restarted')"
    )
    page.wait_for_function(
        "() => document.getElementById('engine').textContent === 'engine: ready'"
    )
    page.unroute("**/api/status")
    assert page.evaluate("window.__sameDocument") is True
    # Chat works as before.
    tab.say("Still there?", max_tokens=4)
    page.wait_for_selector(".msg.assistant[data-outcome=done]", timeout=90_000)


def test_last_hour_charts_are_drawn_from_the_servers_series(tab: Page) -> None:
    """The charts come from `activity` in /api/status; here a known series stands in for it."""
    series = {
        "minutes": [
            {"t": 1_800_000_000 + 60 * i, "tokens_per_s": tps, "ttft_s": ttft, "cache_hit": hit}
            for i, (tps, ttft, hit) in enumerate(
                [(2.5, 0.4, None), (10.0, 0.25, 0.5), (7.5, None, 0.9)]
            )
        ],
        "hour": {"tokens_per_s": 0.333, "ttft_s": 0.325, "cache_hit": 0.8, "output_tokens": 1200},
    }

    def with_series(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "activity": series})

    page = tab.page
    page.route("**/api/status", with_series)
    tab.open()
    page.wait_for_selector("#activity", state="visible")
    charts = {
        "chart-throughput": ("tok/s: 2.5, 10.0, 7.5", 3),
        "chart-ttft": ("TTFT ms: 400, 250", 2),
        "chart-cache": ("cache hits %: 50, 90", 2),
    }
    for chart, (title, points) in charts.items():
        svg = page.locator(f"#{chart} svg.chart")
        assert svg.get_attribute("aria-label") == title
        coords = svg.locator("polyline").get_attribute("points").split()
        assert len(coords) == points
    # Throughput is drawn from zero: 10 tok/s reaches the top, 2.5 a quarter of the way up.
    ys = [
        float(c.split(",")[1])
        for c in page.locator("#chart-throughput polyline").get_attribute("points").split()
    ]
    assert ys[1] == 2.0 and ys[0] == 35.0
    summary = page.inner_text("#activity-summary")
    assert summary == "Over the hour: 0.33 tok/s, TTFT 325 ms, cache hits 80%"


def test_a_sharded_models_group_and_ranks_are_shown(tab: Page) -> None:
    """A group as /api/status reports it (tests/test_cluster_serve.py checks the real one)."""
    group = {
        "state": "restarting",
        "reason": "group tiny: rank 1 on host b (pid 42): its process is gone",
        "parallel": "pipeline",
        "ranks": [
            {"rank": 0, "host": "a", "pid": 41, "state": "stopped", "last_error": None},
            {
                "rank": 1,
                "host": "b",
                "pid": 42,
                "state": "dead",
                "last_error": "process 42 is gone",
            },
        ],
    }

    def with_group(route: Any) -> None:
        response = route.fetch()
        status = response.json()
        status["models"][0]["group"] = group
        route.fulfill(response=response, json=status)

    page = tab.page
    page.route("**/api/status", with_group)
    tab.open()
    box = page.locator("#models tr .group").first
    box.wait_for(state="visible")
    lines = box.locator("div").all_inner_texts()
    assert lines == [
        "pipeline group restarting: group tiny: rank 1 on host b (pid 42): its process is gone",
        "rank 0 on a: pid 41, stopped",
        "rank 1 on b: pid 42, dead (process 42 is gone)",
    ]
    assert box.locator("div.state-error").count() == 1
