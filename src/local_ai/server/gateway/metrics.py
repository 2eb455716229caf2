"""What the gateway counts for `GET /metrics` (Prometheus text, through prometheus-client).

Each request is an `Exchange`: its endpoint, alias, client (from the User-Agent) and status. A
generation's answer passes through a `ResponseTap` on its way to the client, which notes the first
token and reads the usage the engine reports; no prompt or answer text is kept. Figures the engine
and supervisor hold (memory, batch size, loads, restarts) are read when `/metrics` is scraped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CLIENTS = ("claude-code", "zed", "goose", "codex", "browser", "other")
# Real User-Agents: "claude-cli/2.0.0 (external, cli)", "Zed/0.190.0 (macos; aarch64)",
# "codex_cli_rs/0.38.0 (Mac OS 15.5.0; arm64) ...", "goose/1.0.0", browsers "Mozilla/5.0 ...".
_CLIENT_PATTERNS = (
    ("claude-code", re.compile(r"^claude-(cli|code)/", re.IGNORECASE)),
    ("zed", re.compile(r"^zed/", re.IGNORECASE)),
    ("goose", re.compile(r"^goose", re.IGNORECASE)),
    ("codex", re.compile(r"^codex[_-]", re.IGNORECASE)),
    ("browser", re.compile(r"^Mozilla/")),
)
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/anthropic/v1/messages",
    "/anthropic/v1/messages/count_tokens",
    "/v1/models",
    "/anthropic/v1/models",
    "/api/status",
    "/api/load",
    "/metrics",
    "/health",
)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 400, 800)
TOKEN_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls")
MAX_JSON_BYTES = 8 * 1024 * 1024  # a non-streamed answer larger than this is not parsed for usage


def client_of(user_agent: str | None) -> str:
    """Which coding client sent a request, from its User-Agent (one of CLIENTS)."""
    agent = (user_agent or "").strip()
    for name, pattern in _CLIENT_PATTERNS:
        if pattern.search(agent):
            return name
    return "other"


def endpoint_of(path: str) -> str:
    """A bounded label for a request path (unknown paths and page files are `other`)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path.startswith("/anthropic/v1/models/"):
        return "/anthropic/v1/models/{id}"
    return "other"


@dataclass
class Usage:
    prompt_tokens: int = 0  # the whole prompt, cached part included
    cached_tokens: int = 0
    output_tokens: int = 0


def usage_of(data: Any) -> Usage | None:
    """Token counts from an OpenAI or Anthropic `usage` object (None when there is none)."""
    if not isinstance(data, dict):
        return None
    if "prompt_tokens" in data:  # OpenAI: prompt_tokens includes cached_tokens
        details = data.get("prompt_tokens_details") or {}
        return Usage(
            int(data.get("prompt_tokens") or 0),
            int(details.get("cached_tokens") or 0),
            int(data.get("completion_tokens") or 0),
        )
    if "input_tokens" in data:  # the engine's Anthropic usage: input_tokens includes cache reads
        return Usage(
            int(data.get("input_tokens") or 0),
            int(data.get("cache_read_input_tokens") or 0),
            int(data.get("output_tokens") or 0),
        )
    return None


class ResponseTap:
    """Watches an engine answer as it is forwarded: first token, last token, usage.

    With `strip_usage` (the gateway asked the engine for a usage chunk the client did not ask
    for) it also drops that chunk from what the client gets."""

    def __init__(self, *, streaming: bool, strip_usage: bool = False, keep: bool = False) -> None:
        self.streaming = streaming
        self.strip_usage = strip_usage
        self.keep = keep  # collect the parsed events in `events` (the Responses API reads them)
        self.events: list[dict[str, Any]] = []
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.usage: Usage | None = None
        self._buffer = b""
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        """Notes what `chunk` says; returns the bytes to forward."""
        if not self.streaming:
            self._size += len(chunk)
            if self._size <= MAX_JSON_BYTES:
                self._buffer += chunk
            return chunk
        self._buffer += chunk
        out: list[bytes] = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            if self._event(event) or not self.strip_usage:
                out.append(event + b"\n\n")
        if not self.strip_usage:
            return chunk
        return b"".join(out)

    def finish(self) -> bytes:
        """At the end of the answer: anything still held back (an unterminated event)."""
        if not self.streaming:
            if self._size <= MAX_JSON_BYTES:
                try:
                    body = json.loads(self._buffer)
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    self.usage = usage_of(body.get("usage")) or self.usage
            return b""
        rest, self._buffer = self._buffer, b""
        return rest if self.strip_usage else b""

    def token_seen(self) -> None:
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
        self.last_token = now

    def _event(self, event: bytes) -> bool:
        """Reads one SSE event; False when it is a usage chunk to drop."""
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload.startswith(b"{"):
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            if isinstance(data, dict):
                return self._data(data)
        return True

    def _data(self, data: dict[str, Any]) -> bool:
        if self.keep:
            self.events.append(data)
        kind = data.get("type")
        if kind == "content_block_delta":  # Anthropic
            self.token_seen()
        elif kind == "message_start":
            message = data.get("message")
            usage = usage_of(message.get("usage")) if isinstance(message, dict) else None
            self.usage = usage or self.usage
        elif kind == "message_delta":
            self.usage = usage_of(data.get("usage")) or self.usage
        elif "choices" in data:  # OpenAI chat completion chunk
            for choice in data.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and any(delta.get(k) for k in TOKEN_FIELDS):
                    self.token_seen()
            if data.get("usage"):
                self.usage = usage_of(data["usage"]) or self.usage
                return not self.strip_usage
        return True


@dataclass
class _Minute:
    tokens: int = 0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    prompt: int = 0
    cached: int = 0


class History:
    """The last hour, minute by minute: generated tokens, time to first token and prompt-cache
    hits (for the page's charts and `local-ai server status`)."""

    def __init__(self, minutes: int = 60) -> None:
        self.minutes = minutes
        self._buckets: dict[int, _Minute] = {}

    def _bucket(self, now: float) -> _Minute:
        minute = int(now // 60)
        for old in [m for m in self._buckets if m <= minute - self.minutes]:
            del self._buckets[old]
        return self._buckets.setdefault(minute, _Minute())

    def add(self, *, ttft: float | None, usage: Usage | None, now: float | None = None) -> None:
        bucket = self._bucket(time.time() if now is None else now)
        if ttft is not None:
            bucket.ttft_sum += ttft
            bucket.ttft_count += 1
        if usage is not None:
            bucket.tokens += usage.output_tokens
            bucket.prompt += usage.prompt_tokens
            bucket.cached += min(usage.cached_tokens, usage.prompt_tokens)

    def series(self, now: float | None = None) -> dict[str, Any]:
        """Each minute with traffic (`t`: its start, Unix seconds): tokens/s over the minute,
        mean TTFT, cache-hit ratio; `hour`: the same over the whole hour."""
        self._bucket(time.time() if now is None else now)  # drops minutes older than the hour
        points = []
        total = _Minute()
        for minute, b in sorted(self._buckets.items()):
            if not (b.tokens or b.ttft_count or b.prompt):
                continue
            points.append({"t": minute * 60, **_figures(b, 60.0)})
            total.tokens += b.tokens
            total.ttft_sum += b.ttft_sum
            total.ttft_count += b.ttft_count
            total.prompt += b.prompt
            total.cached += b.cached
        return {"minutes": points, "hour": _figures(total, 60.0 * self.minutes)}


def _figures(b: _Minute, seconds: float) -> dict[str, Any]:
    return {
        "tokens_per_s": round(b.tokens / seconds, 3),
        "ttft_s": round(b.ttft_sum / b.ttft_count, 3) if b.ttft_count else None,
        "cache_hit": round(b.cached / b.prompt, 3) if b.prompt else None,
        "output_tokens": b.tokens,
    }


@dataclass
class Exchange:
    """One HTTP request, as the metrics see it."""

    endpoint: str
    client: str
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    alias: str = ""
    tap: ResponseTap | None = None
    unavailable: str | None = None  # why a 503 was sent


class _StateCollector(Collector):
    """Figures read at scrape time from the gateway, its supervisor and the engine's /status."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        s = self.state
        yield _gauge("local_ai_queue_depth", "Requests waiting for a generation slot", s["queued"])
        yield _gauge(
            "local_ai_active_streams", "Generations the gateway is forwarding now", s["active"]
        )
        yield _gauge("local_ai_engine_up", "1 when the engine answers requests", s["engine_up"])
        restarts = CounterMetricFamily(
            "local_ai_engine_restarts", "Engine processes replaced since the gateway started"
        )
        restarts.add_metric([], s["restarts"])
        yield restarts
        engine = s.get("engine") or {}
        if engine.get("active_generations") is not None:
            yield _gauge(
                "local_ai_engine_batch_size",
                "Generations the engine is decoding together",
                engine["active_generations"],
            )
        memory = GaugeMetricFamily(
            "local_ai_engine_memory_bytes", "MLX memory in the engine", labels=["kind"]
        )
        for kind in ("active", "peak", "cache"):
            value = engine.get(f"{kind}_memory_bytes")
            if value is not None:
                memory.add_metric([kind], value)
        yield memory
        loads = CounterMetricFamily(
            "local_ai_model_loads", "Model loads by the running engine", labels=["alias"]
        )
        load_seconds = CounterMetricFamily(
            "local_ai_model_load_seconds",
            "Seconds spent loading models in the running engine",
            labels=["alias"],
        )
        for alias, figures in s.get("loads", {}).items():
            loads.add_metric([alias], figures["count"])
            load_seconds.add_metric([alias], figures["seconds"])
        yield loads
        yield load_seconds


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class GatewayMetrics:
    """The gateway's own registry (never prometheus-client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "local_ai_requests",
            "HTTP requests by endpoint, alias, status and client",
            ["endpoint", "alias", "status", "client"],
            registry=r,
        )
        self.ttft = Histogram(
            "local_ai_time_to_first_token_seconds",
            "Time from a streamed request to its first token",
            ["endpoint", "alias", "client"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "local_ai_request_duration_seconds",
            "Time from a generation request to the end of its answer",
            ["endpoint", "alias", "client"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "local_ai_prompt_tokens",
            "Prompt tokens, computed by prefill or served from the prompt cache",
            ["alias", "client", "source"],
            registry=r,
        )
        self.output_tokens = Counter(
            "local_ai_output_tokens",
            "Generated tokens",
            ["alias", "client"],
            registry=r,
        )
        self.decode_rate = Histogram(
            "local_ai_decode_tokens_per_second",
            "Decoding speed of streamed answers (tokens after the first, per second)",
            ["alias"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.unavailable = Counter(
            "local_ai_unavailable",
            "503 answers by reason (busy, engine_not_ready, engine_restarting, engine_lost)",
            ["reason"],
            registry=r,
        )
        self._state = _StateCollector()
        r.register(self._state)
        self.history = History()

    def record(self, ex: Exchange) -> None:
        """Counts a finished request (499: the client left before an answer started)."""
        status = str(ex.status) if ex.status is not None else "499"
        self.requests.labels(ex.endpoint, ex.alias, status, ex.client).inc()
        if ex.unavailable:
            self.unavailable.labels(ex.unavailable).inc()
        tap = ex.tap
        if tap is None or ex.status != 200:
            return
        now = time.monotonic()
        self.duration.labels(ex.endpoint, ex.alias, ex.client).observe(now - ex.started)
        ttft = tap.first_token - ex.started if tap.first_token is not None else None
        if ttft is not None:
            self.ttft.labels(ex.endpoint, ex.alias, ex.client).observe(ttft)
        usage = tap.usage
        self.history.add(ttft=ttft, usage=usage)
        if usage is None:
            return
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        self.prompt_tokens.labels(ex.alias, ex.client, "computed").inc(usage.prompt_tokens - cached)
        self.prompt_tokens.labels(ex.alias, ex.client, "cache").inc(cached)
        self.output_tokens.labels(ex.alias, ex.client).inc(usage.output_tokens)
        if tap.first_token is not None and tap.last_token is not None:
            span = tap.last_token - tap.first_token
            if usage.output_tokens > 1 and span > 0:
                self.decode_rate.labels(ex.alias).observe((usage.output_tokens - 1) / span)

    def render(self, state: dict[str, Any]) -> bytes:
        """The text exposition, with the scrape-time figures in `state`."""
        self._state.state = state
        return generate_latest(self.registry)
