"""Reliability of the real daemon with a tiny model: concurrent load, hostile HTTP input and an
engine killed mid-stream (issue 11, server part). Figures are printed (`pytest -s`) and recorded
in docs/reliability.md.

The load runs 50 clients for 60 s (marked slow: `-m "not slow"` skips it in a quick local run).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.server_helpers import Daemon, build_chat_model, free_port, wait_for

CONTEXT = 2048
MAX_OUTPUT = 64  # the "tiny" alias; "long" (same weights) keeps the context as its limit
MAX_QUEUED = 16
LOAD_CLIENTS = 50
LOAD_SECONDS = 60.0
WARMUP_SECONDS = 3.0
OPENAI = "/v1/chat/completions"
ANTHROPIC = "/anthropic/v1/messages"


@dataclass
class Served:
    daemon: Daemon
    model_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("reliability")
    model = build_chat_model(root / "tiny")
    port = free_port()
    manifest = root / "local-ai.toml"
    manifest.write_text(
        "\n".join(
            [
                "version = 1",
                "[server]",
                f"port = {port}",
                "max_body_mb = 1",
                'preload = ["tiny"]',
                "[server.engine]",
                f"max_queued_requests = {MAX_QUEUED}",
                "[models.tiny]",
                f'path = "{model}"',
                f"context = {CONTEXT}",
                f"max_output_tokens = {MAX_OUTPUT}",
                "[models.long]",
                f'path = "{model}"',
                f"context = {CONTEXT}",
                "",
            ]
        )
    )
    daemon = Daemon(home=root / "home", manifest=manifest, port=port)
    with daemon.running():
        yield Served(daemon, model)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.daemon.url, timeout=30, trust_env=False) as c:
        yield c


def openai_body(max_tokens: int = 2, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hello there, how are you?"}],
        "max_tokens": max_tokens,
        "stream": stream,
        **extra,
    }


def anthropic_body(max_tokens: int = 2, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {**openai_body(max_tokens, stream), **extra}


def assert_healthy(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ready", health.text
    # Greedy: a sampled token of the random model may be a special one (`<think>`) that leaves
    # `content` empty, which says nothing about the server's health.
    normal = client.post(OPENAI, json=openai_body(temperature=0))
    assert normal.status_code == 200, normal.text
    answer = normal.json()
    assert answer["choices"][0]["finish_reason"] == "length", answer
    assert answer["usage"]["completion_tokens"] == 2, answer
    assert answer["choices"][0]["message"]["content"], answer


def status(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/api/status").json())


def rss_bytes(daemon: Daemon) -> dict[str, int]:
    info = daemon.pidfile()
    return {
        "gateway": psutil.Process(int(info["pid"])).memory_info().rss,
        "engine": psutil.Process(int(info["engine_pid"])).memory_info().rss,
    }


# --- load ---------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    health_latencies: list[float] = field(default_factory=list)
    health_statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: str, kind: str, problem: str | None = None) -> None:
        with self.lock:
            self.statuses[key] += 1
            self.kinds[kind] += 1
            if problem:
                self.problems.append(problem)


def one_request(http: httpx.Client, kind: str, max_tokens: int, result: LoadResult) -> float:
    """One request of the mix; returns how long to wait before the next (after a 503)."""
    path = ANTHROPIC if kind.startswith("anthropic") else OPENAI
    stream = kind.endswith("stream")
    body = openai_body(max_tokens, stream) if path == OPENAI else anthropic_body(max_tokens, stream)
    try:
        with http.stream("POST", path, json=body) as response:
            text = response.read().decode(errors="replace")
    except httpx.HTTPError as exc:
        result.record(f"exception {type(exc).__name__}", kind, f"{kind}: {exc!r}")
        return 0.0
    code = response.status_code
    if code == 503:
        problem = None
        if not response.headers.get("retry-after"):
            problem = f"{kind}: 503 without Retry-After"
        error = json.loads(text)["error"]["type"]
        if error != ("overloaded_error" if path == ANTHROPIC else "server_error"):
            problem = f"{kind}: 503 with error type {error}"
        result.record("503", kind, problem)
        return 0.2  # shorter than Retry-After on purpose: keep the queue full
    if code != 200:
        result.record(str(code), kind, f"{kind}: {code} {text[:200]}")
        return 0.0
    problem = None
    if not stream:
        answer = json.loads(text)
        finished = (
            answer["choices"][0]["finish_reason"] if path == OPENAI else answer.get("stop_reason")
        )
        if not finished:
            problem = f"{kind}: unfinished answer {text[:200]}"
    elif path == OPENAI and not text.rstrip().endswith("data: [DONE]"):
        problem = f"{kind}: stream without [DONE]: {text[-200:]!r}"
    elif path == ANTHROPIC and "event: message_stop" not in text:
        problem = f"{kind}: stream without message_stop: {text[-200:]!r}"
    result.record("200" if problem is None else "200 incomplete", kind, problem)
    return 0.0


def run_load(url: str, clients: int, seconds: float) -> LoadResult:
    result = LoadResult()
    deadline = time.monotonic() + seconds
    stop_health = threading.Event()
    kinds = ("openai", "openai-stream", "anthropic", "anthropic-stream")

    def client_loop(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
            n = index
            while time.monotonic() < deadline:
                pause = one_request(http, kinds[n % len(kinds)], rng.randint(4, 16), result)
                n += 1
                if pause:
                    time.sleep(pause)

    def health_loop() -> None:
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as http:
            while not stop_health.is_set():
                started = time.perf_counter()
                try:
                    code = http.get("/health").status_code
                except httpx.HTTPError:
                    code = 0
                result.health_latencies.append(time.perf_counter() - started)
                result.health_statuses[code] += 1
                stop_health.wait(0.05)

    health = threading.Thread(target=health_loop, daemon=True)
    health.start()
    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
        assert not thread.is_alive(), "a load client hung"
    stop_health.set()
    health.join(15)
    return result


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.slow
def test_load_concurrent_clients(served: Served, client: httpx.Client) -> None:
    daemon = served.daemon
    run_load(daemon.url, LOAD_CLIENTS, WARMUP_SECONDS)
    assert wait_for(lambda: status(client)["requests"]["active"] == 0, 30)
    rss_before = rss_bytes(daemon)
    engine_pid = daemon.pidfile()["engine_pid"]
    busy_before = status(client)["requests"]["rejected_busy"]

    started = time.monotonic()
    result = run_load(daemon.url, LOAD_CLIENTS, LOAD_SECONDS)
    elapsed = time.monotonic() - started

    assert wait_for(lambda: status(client)["requests"]["active"] == 0, 30)
    after = status(client)
    rss_after = rss_bytes(daemon)
    health_p50 = statistics.median(result.health_latencies)
    health_p99 = p99(result.health_latencies)
    total = sum(result.statuses.values())
    print(
        f"\nload: {LOAD_CLIENTS} clients x {LOAD_SECONDS:.0f} s (all done in {elapsed:.1f} s): "
        f"{total} requests, by status {dict(result.statuses)}, by kind {dict(result.kinds)}; "
        f"/health polled {len(result.health_latencies)} times, statuses "
        f"{dict(result.health_statuses)}, median {health_p50 * 1000:.0f} ms, "
        f"p99 {health_p99 * 1000:.0f} ms, "
        f"max {max(result.health_latencies) * 1000:.0f} ms; RSS MB gateway "
        f"{rss_before['gateway'] / 2**20:.0f} -> {rss_after['gateway'] / 2**20:.0f}, engine "
        f"{rss_before['engine'] / 2**20:.0f} -> {rss_after['engine'] / 2**20:.0f}"
    )
    # Only answers and clean refusals; every answer complete.
    assert not result.problems, result.problems[:10]
    assert set(result.statuses) <= {"200", "503"}, result.statuses
    assert result.statuses["200"] >= LOAD_CLIENTS  # real work was done, not just refusals
    # The gateway counted the same refusals we saw (no silent drops), and none leaked a slot.
    assert after["requests"]["rejected_busy"] - busy_before == result.statuses["503"]
    assert after["requests"]["queued"] == 0
    assert after["engine"]["active_generations"] == 0
    assert daemon.pidfile()["engine_pid"] == engine_pid  # the engine never restarted
    # /health stays responsive under load: every poll answered (10 s timeout), most at once. The
    # tail (p99, printed) follows the machine's own load, so it is recorded, not asserted.
    assert set(result.health_statuses) == {200}, result.health_statuses
    assert health_p50 < 1.0
    # Memory stable: generous bound, the point is catching a leak per request.
    before_total = rss_before["gateway"] + rss_before["engine"]
    after_total = rss_after["gateway"] + rss_after["engine"]
    assert after_total < before_total * 1.5, (rss_before, rss_after)
    assert_healthy(client)


# --- hostile HTTP input -------------------------------------------------------------------------

MSG = [{"role": "user", "content": "hi"}]
LONG_TEXT = "hello world " * 1500  # ~3000 tokens against a 2048 context


def j(**body: Any) -> bytes:
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Hostile:
    path: str
    body: bytes
    status: int
    error: str  # OpenAI `error.type` / Anthropic `error.type`
    content_type: str = "application/json"
    code: str | None = None  # OpenAI `error.code`
    message: str | None = None  # part of the message


OVERSIZED = b'{"model": "tiny", "messages": [], "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
OA_INVALID = "invalid_request_error"
HOSTILE: dict[str, Hostile] = {
    "oversized-openai": Hostile(OPENAI, OVERSIZED, 413, OA_INVALID),
    "oversized-anthropic": Hostile(ANTHROPIC, OVERSIZED, 413, "request_too_large"),
    "invalid-json-openai": Hostile(OPENAI, b'{"model": "tiny", "mess', 400, OA_INVALID),
    "invalid-json-anthropic": Hostile(ANTHROPIC, b"{nope", 400, "invalid_request_error"),
    "not-utf8": Hostile(OPENAI, b"\xff\xfe{\x00}", 400, OA_INVALID),
    "json-array": Hostile(OPENAI, b"[1, 2]", 400, OA_INVALID, message="JSON object"),
    "text-plain": Hostile(OPENAI, j(model="tiny", messages=MSG), 415, OA_INVALID, "text/plain"),
    "form-anthropic": Hostile(
        ANTHROPIC, b"model=tiny", 415, "invalid_request_error", "application/x-www-form-urlencoded"
    ),
    "max-tokens-negative": Hostile(
        OPENAI, j(model="tiny", messages=MSG, max_tokens=-1), 400, OA_INVALID, code="invalid_value"
    ),
    "max-completion-tokens-zero": Hostile(
        OPENAI, j(model="tiny", messages=MSG, max_completion_tokens=0), 400, OA_INVALID
    ),
    "max-tokens-negative-anthropic": Hostile(
        ANTHROPIC, j(model="tiny", messages=MSG, max_tokens=-5), 400, "invalid_request_error"
    ),
    "max-tokens-string": Hostile(
        OPENAI, j(model="tiny", messages=MSG, max_tokens="ten"), 400, OA_INVALID
    ),
    "temperature-nan": Hostile(
        OPENAI,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        OA_INVALID,
        message="not valid JSON",
    ),
    "temperature-nan-anthropic": Hostile(
        ANTHROPIC,
        b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],'
        b' "temperature": NaN}',
        400,
        "invalid_request_error",
    ),
    "temperature-infinity": Hostile(
        OPENAI,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}],'
        b' "temperature": -Infinity}',
        400,
        OA_INVALID,
    ),
    "temperature-out-of-range": Hostile(
        OPENAI, j(model="tiny", messages=MSG, max_tokens=2, temperature=7), 400, OA_INVALID
    ),
    "prompt-beyond-context": Hostile(
        OPENAI,
        j(model="tiny", messages=[{"role": "user", "content": LONG_TEXT}]),
        400,
        OA_INVALID,
        code="context_length_exceeded",
    ),
    "prompt-beyond-context-anthropic": Hostile(
        ANTHROPIC,
        j(model="tiny", max_tokens=5, messages=[{"role": "user", "content": LONG_TEXT}]),
        400,
        "invalid_request_error",
        message="prompt is too long",
    ),
    "unknown-model": Hostile(
        OPENAI, j(model="gpt-4o", messages=MSG), 404, OA_INVALID, code="model_not_found"
    ),
    "unknown-model-anthropic": Hostile(
        ANTHROPIC, j(model="claude-x", max_tokens=2, messages=MSG), 404, "not_found_error"
    ),
    "hf-id-as-model": Hostile(
        OPENAI, j(model="Qwen/Qwen3-0.6B", messages=MSG), 404, OA_INVALID, code="model_not_found"
    ),
    "absolute-path-as-model": Hostile(
        OPENAI, j(model="/etc/passwd", messages=MSG), 404, OA_INVALID, code="model_not_found"
    ),
    "served-dir-as-model": Hostile(
        ANTHROPIC, j(model="{model_dir}", max_tokens=2, messages=MSG), 404, "not_found_error"
    ),
    "dotdot-as-model": Hostile(
        OPENAI, j(model="../x", messages=MSG), 404, OA_INVALID, code="model_not_found"
    ),
    "number-as-model": Hostile(OPENAI, j(model=123, messages=MSG), 404, OA_INVALID),
    "adapter-path": Hostile(
        OPENAI, j(model="tiny", messages=MSG, adapter_path="/tmp/x"), 400, OA_INVALID
    ),
    "draft-model-anthropic": Hostile(
        ANTHROPIC,
        j(model="tiny", max_tokens=2, messages=MSG, draft_model="/tmp/d"),
        400,
        "invalid_request_error",
    ),
    "extra-body-adapter": Hostile(
        OPENAI, j(model="tiny", messages=MSG, extra_body={"adapter_path": "/x"}), 400, OA_INVALID
    ),
    "trust-remote-code": Hostile(
        OPENAI, j(model="tiny", messages=MSG, trust_remote_code=True), 400, OA_INVALID
    ),
    "empty-messages": Hostile(OPENAI, j(model="tiny", messages=[]), 400, OA_INVALID),
    "empty-messages-anthropic": Hostile(
        ANTHROPIC, j(model="tiny", max_tokens=2, messages=[]), 400, "invalid_request_error"
    ),
    "missing-messages": Hostile(OPENAI, j(model="tiny", max_tokens=2), 400, OA_INVALID),
    "messages-not-a-list": Hostile(OPENAI, j(model="tiny", messages="hi"), 400, OA_INVALID),
    "content-wrong-type": Hostile(
        OPENAI, j(model="tiny", messages=[{"role": "user", "content": 5}]), 400, OA_INVALID
    ),
    "unknown-role": Hostile(
        OPENAI, j(model="tiny", messages=[{"role": "wizard", "content": "x"}]), 400, OA_INVALID
    ),
    "tools-wrong-type": Hostile(
        OPENAI, j(model="tiny", messages=MSG, tools="nope"), 400, OA_INVALID
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_request(name: str, served: Served, client: httpx.Client) -> None:
    case = HOSTILE[name]
    body = case.body.replace(b"{model_dir}", str(served.model_dir).encode())
    # The status and error type say it was refused; the client's 30 s timeout catches a hang.
    response = client.post(case.path, content=body, headers={"content-type": case.content_type})
    assert response.status_code == case.status, response.text
    answer = response.json()
    if case.path == ANTHROPIC:
        assert answer["type"] == "error"
    error = answer["error"]
    assert error["type"] == case.error, answer
    assert isinstance(error["message"], str) and error["message"]
    if case.code is not None:
        assert error["code"] == case.code, answer
    if case.message is not None:
        assert case.message in error["message"], answer
    assert_healthy(client)


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_huge_max_tokens_is_capped(path: str, client: httpx.Client) -> None:
    body = {"model": "tiny", "messages": MSG, "max_tokens": 10**12}
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage.get("completion_tokens", usage.get("output_tokens")) <= MAX_OUTPUT


def raw_exchange(port: int, head: bytes, body: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pytest.fail(f"no answer and no close within 30 s: {data!r}")
    return data


def post_head(port: int, length: int) -> bytes:
    return (
        f"POST {OPENAI} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_lying_content_length(served: Served, client: httpx.Client) -> None:
    port = served.daemon.port
    body = j(model="tiny", messages=MSG, max_tokens=2)
    # Claims more than the limit: refused from the header alone.
    claimed_huge = raw_exchange(port, post_head(port, 50 * 1024 * 1024), body)
    assert claimed_huge.startswith(b"HTTP/1.1 413"), claimed_huge[:200]
    # Claims less than sent: the truncated JSON is invalid.
    claimed_short = raw_exchange(port, post_head(port, len(body) // 2), body)
    assert claimed_short.startswith(b"HTTP/1.1 400"), claimed_short[:200]
    # Claims more than sent, then the client stops sending: no answer or a 4xx, never a 5xx or
    # a stuck connection.
    claimed_long = raw_exchange(port, post_head(port, len(body) + 100), body, half_close=True)
    assert claimed_long == b"" or claimed_long.startswith(b"HTTP/1.1 4"), claimed_long[:200]
    assert_healthy(client)


# --- engine faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_engine_killed_mid_stream(path: str, served: Served, client: httpx.Client) -> None:
    daemon = served.daemon
    engine_pid = int(daemon.pidfile()["engine_pid"])
    # Greedy: the stream runs to max_tokens (sampled, an early end token could finish it first).
    body = {"model": "long", "messages": MSG, "max_tokens": 1900, "stream": True, "temperature": 0}
    lines: list[str] = []
    timeout = httpx.Timeout(30.0)  # a read that stalls 30 s fails the test instead of hanging
    with (
        httpx.Client(base_url=daemon.url, timeout=timeout, trust_env=False) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        killed = False
        for line in response.iter_lines():
            lines.append(line)
            if not killed and line.startswith("data: "):
                os.kill(engine_pid, signal.SIGKILL)
                killed = True
    data = [line[6:] for line in lines if line.startswith("data: ")]
    assert data[-1] != "[DONE]" and "event: message_stop" not in lines
    last = json.loads(data[-1])
    if path == ANTHROPIC:
        assert "event: error" in lines
        assert last["type"] == "error" and last["error"]["type"] == "overloaded_error"
    else:
        assert last["error"]["type"] == "server_error"
    assert "engine stopped" in json.dumps(last)

    def replaced() -> bool:
        pid = daemon.pidfile().get("engine_pid")
        health = client.get("/health")
        return pid not in (None, engine_pid) and health.json()["status"] == "ready"

    # A cold engine (no warm standby yet after the first kill) imports for 5-6 s when busy.
    assert wait_for(replaced, 60)
    assert status(client)["engine"]["active_generations"] == 0
    assert_healthy(client)
    again = client.post(path, json={"model": "tiny", "messages": MSG, "max_tokens": 3})
    assert again.status_code == 200, again.text
