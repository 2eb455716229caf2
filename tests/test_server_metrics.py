"""`GET /metrics` against a real daemon: traffic from the official SDKs with the User-Agents of
Claude Code, Zed and Codex, scraped with prometheus-client's own text parser."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from local_ai.server.gateway.metrics import client_of
from tests.server_helpers import (
    Daemon,
    build_chat_model,
    claude_code_body,
    free_port,
    serving,
    wait_for,
    write_manifest,
)

API_KEY = "metrics-key-0123456789"
AUTH = {"authorization": f"Bearer {API_KEY}"}
# As the clients send them (Claude Code's CLI, Zed's global HTTP client, Codex's reqwest client).
CLAUDE_UA = "claude-cli/2.0.14 (external, cli)"
ZED_UA = "Zed/0.207.3 (macos; aarch64)"
CODEX_UA = "codex_cli_rs/0.46.0 (Mac OS 15.6.1; arm64) Apple_Terminal/455.1"
CHAT = "/v1/chat/completions"
MESSAGES = "/anthropic/v1/messages"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("metrics")
    port = free_port()
    manifest = write_manifest(
        root,
        port=port,
        models={"tiny": build_chat_model(root / "tiny")},
        context=2048,
        server_extra='api_key_env = "LOCAL_AI_TEST_KEY"\npreload = ["tiny"]',
        engine_extra="max_queued_requests = 0",
    )
    d = Daemon(
        home=root / "home", manifest=manifest, port=port, extra_env={"LOCAL_AI_TEST_KEY": API_KEY}
    )
    with serving(d):
        yield d


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, headers=AUTH, timeout=60, trust_env=False) as c:
        yield c


def scrape(client: httpx.Client) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


def claude_code_call(claude: Any, billing: str, *, stream: bool) -> Any:
    """Claude Code's body through the SDK (fields the SDK does not name go as extra_body)."""
    body = claude_code_body(billing, stream)
    named = {k: body.pop(k) for k in ("model", "max_tokens", "messages", "stream")}
    return claude.messages.create(**named, extra_body=body)


def test_clients_are_told_apart_by_user_agent() -> None:
    assert client_of(CLAUDE_UA) == "claude-code"
    assert client_of("claude-cli/2.0.0 (external, claude-vscode)") == "claude-code"
    assert client_of(ZED_UA) == "zed"
    assert client_of(CODEX_UA) == "codex"
    assert client_of("goose/1.9.0") == "goose"
    assert client_of("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605") == "browser"
    assert client_of("OpenAI/Python 1.99.0") == "other"
    assert client_of(None) == "other"


def test_metrics_need_the_api_key(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30, trust_env=False) as anon:
        assert anon.get("/metrics").status_code == 401
        admin = anon.get("/metrics", headers={"authorization": f"Bearer {daemon.token()}"})
        assert admin.status_code == 200
        keyed = anon.get("/metrics", headers={"x-api-key": API_KEY})
        assert keyed.status_code == 200
        assert "local_ai_requests_total" in keyed.text


def test_sdk_traffic_moves_counters_histograms_and_cache_figures(
    daemon: Daemon, client: httpx.Client
) -> None:
    import anthropic
    import openai

    before = scrape(client)

    zed = openai.OpenAI(
        base_url=f"{daemon.url}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": ZED_UA},
    )
    messages: Any = [{"role": "user", "content": "Write a haiku about tea."}]
    plain = zed.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0
    )
    assert plain.usage is not None
    # Streamed without include_usage: the client gets no usage chunk, the metrics still count.
    chunks = list(
        zed.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)

    codex = openai.OpenAI(
        base_url=f"{daemon.url}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": CODEX_UA},
    )
    codex_chunks = list(
        codex.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    codex_usage = next(c.usage for c in codex_chunks if c.usage is not None)

    claude = anthropic.Anthropic(
        base_url=f"{daemon.url}/anthropic",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": CLAUDE_UA},
    )
    # Claude Code's shape: only the billing line differs, so the prefix comes from the cache.
    reads: list[tuple[int, int]] = []  # (input tokens, of which read from the cache)
    for billing in ("aaa", "bbb"):
        message = claude_code_call(claude, billing, stream=False)
        reads.append((message.usage.input_tokens, message.usage.cache_read_input_tokens or 0))
    final: Any = None
    for event in claude_code_call(claude, "ccc", stream=True):
        if event.type == "message_delta":
            final = event.usage
    assert final is not None
    reads.append((final.input_tokens, final.cache_read_input_tokens or 0))
    assert reads[1][1] > reads[1][0] // 2 and reads[2][1] > reads[2][0] // 2, reads

    after = scrape(client)
    requests = "local_ai_requests_total"
    assert (
        delta(before, after, requests, endpoint=CHAT, alias="tiny", status="200", client="zed") == 2
    )
    assert (
        delta(before, after, requests, endpoint=CHAT, alias="tiny", status="200", client="codex")
        == 1
    )
    assert (
        delta(
            before,
            after,
            requests,
            endpoint=MESSAGES,
            alias="tiny",
            status="200",
            client="claude-code",
        )
        == 3
    )
    # TTFT is observed for streams; end-to-end latency for every generation.
    ttft, duration = (
        "local_ai_time_to_first_token_seconds_count",
        "local_ai_request_duration_seconds_count",
    )
    assert delta(before, after, ttft, endpoint=CHAT, alias="tiny", client="zed") == 1
    assert delta(before, after, duration, endpoint=CHAT, alias="tiny", client="zed") == 2
    assert delta(before, after, ttft, endpoint=MESSAGES, alias="tiny", client="claude-code") == 1
    assert (
        delta(before, after, duration, endpoint=MESSAGES, alias="tiny", client="claude-code") == 3
    )
    inf = {"endpoint": MESSAGES, "alias": "tiny", "client": "claude-code", "le": "+Inf"}
    assert delta(before, after, "local_ai_time_to_first_token_seconds_bucket", **inf) == 1
    assert (
        delta(
            before,
            after,
            "local_ai_time_to_first_token_seconds_sum",
            **{k: v for k, v in inf.items() if k != "le"},
        )
        > 0
    )
    # Token figures are the engine's usage, exactly.
    out = "local_ai_output_tokens_total"
    assert (
        delta(before, after, out, alias="tiny", client="zed") == plain.usage.completion_tokens + 8
    )
    assert delta(before, after, out, alias="tiny", client="codex") == codex_usage.completion_tokens
    prompt = "local_ai_prompt_tokens_total"
    cached = sum(c for _, c in reads)
    computed = sum(i - c for i, c in reads)
    assert (
        delta(before, after, prompt, alias="tiny", client="claude-code", source="cache") == cached
    )
    assert (
        delta(before, after, prompt, alias="tiny", client="claude-code", source="computed")
        == computed
    )
    assert cached > computed  # the cache-hit ratio Claude Code users look at
    assert delta(before, after, "local_ai_decode_tokens_per_second_count", alias="tiny") == 3
    # Engine figures, read at scrape time.
    for kind in ("active", "peak", "cache"):
        assert ("local_ai_engine_memory_bytes", frozenset({("kind", kind)})) in after
    assert val(after, "local_ai_engine_memory_bytes", kind="peak") > 0
    assert val(after, "local_ai_model_loads_total", alias="tiny") >= 1  # preloaded
    assert val(after, "local_ai_model_load_seconds_total", alias="tiny") > 0
    assert val(after, "local_ai_engine_up") == 1


def _stream(daemon: Daemon, done: threading.Event, statuses: list[int]) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": 1900,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client(base_url=daemon.url, headers=AUTH, timeout=60, trust_env=False) as c,
        c.stream("POST", CHAT, json=body) as response,
    ):
        statuses.append(response.status_code)
        for _ in response.iter_lines():
            if done.is_set():
                break


def test_streams_batch_and_busy_503s(daemon: Daemon, client: httpx.Client) -> None:
    before = scrape(client)
    done = threading.Event()
    statuses: list[int] = []
    threads = [
        threading.Thread(target=_stream, args=(daemon, done, statuses), daemon=True)
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        # max_active is 4 and nothing may queue: four streams fill the gateway.
        def full() -> bool:
            s = scrape(client)
            return (
                val(s, "local_ai_active_streams") == 4 and val(s, "local_ai_engine_batch_size") == 4
            )

        assert wait_for(full, 60, interval=0.2)
        refused = client.post(
            CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        )
        assert refused.status_code == 503
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert statuses == [200] * 4
    assert wait_for(lambda: val(scrape(client), "local_ai_active_streams") == 0, 30)
    after = scrape(client)
    assert delta(before, after, "local_ai_unavailable_total", reason="busy") == 1
    assert (
        delta(
            before,
            after,
            "local_ai_requests_total",
            endpoint=CHAT,
            alias="tiny",
            status="503",
            client="other",
        )
        == 1
    )


def test_engine_restarts_are_counted(daemon: Daemon, client: httpx.Client) -> None:
    before = val(scrape(client), "local_ai_engine_restarts_total")
    pid = client.get("/api/status").json()["engine"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        s = scrape(client)
        return (
            val(s, "local_ai_engine_restarts_total") == before + 1
            and val(s, "local_ai_engine_up") == 1
        )

    assert wait_for(replaced, 60, interval=0.2)
