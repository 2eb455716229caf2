"""Measure generation through the running server as an editor does: streamed chat completions.

One stream gives time to first token (TTFT), prompt-processing rate (prompt tokens / TTFT),
decode rate (tokens after the first / time after the first) and end-to-end latency. Several
streams started together give the aggregate and per-stream decode rates and the spread of TTFTs.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from local_ai.errors import ServerError
from local_ai.util.failpoints import failpoint

# A prompt of roughly `n` tokens: short common words are about one token each.
_WORDS = ("the", "model", "reads", "this", "text", "and", "counts", "each", "word", "once")


def prompt_of(tokens: int, salt: int = 0) -> str:
    """About `tokens` tokens; `salt` changes the first word so prefix caches do not help."""
    words = [_WORDS[(i + salt) % len(_WORDS)] for i in range(max(1, tokens - 8))]
    return f"Run {salt}. Summarise: " + " ".join(words)


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    total_s: float
    prompt_tokens: int
    generated_tokens: int
    started: float  # perf_counter at request start
    first_token: float  # perf_counter at first token
    ended: float

    @property
    def decode_tps(self) -> float:
        span = self.ended - self.first_token
        return (self.generated_tokens - 1) / span if span > 0 and self.generated_tokens > 1 else 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0


def stream_once(
    url: str,
    alias: str,
    *,
    prompt_tokens: int,
    gen_tokens: int,
    api_key: str | None = None,
    salt: int = 0,
    timeout: float = 600.0,
) -> Sample:
    """Stream one chat completion and time it. Token counts come from the server's usage."""
    import httpx

    body = {
        "model": alias,
        "messages": [{"role": "user", "content": prompt_of(prompt_tokens, salt)}],
        "max_tokens": gen_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    chunks = 0
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=timeout,
            trust_env=False,
        ) as response:
            if response.status_code != 200:
                response.read()
                raise ServerError(
                    f"benchmark request for {alias} failed: HTTP {response.status_code} "
                    f"{response.text[:300]}",
                    hint="see `local-ai server logs --engine`",
                )
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                data = json.loads(line[5:])
                for choice in data.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
                            failpoint("bench.first-token")  # mid-stream, the engine generating
                if data.get("usage"):
                    usage = data["usage"]
    except httpx.HTTPError as exc:
        raise ServerError(f"benchmark request for {alias} failed: {exc}") from exc
    end = time.perf_counter()
    first = first or end
    return Sample(
        ttft_s=first - start,
        total_s=end - start,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        generated_tokens=int(usage.get("completion_tokens") or chunks),
        started=start,
        first_token=first,
        ended=end,
    )


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values)) if values else cls(0, 0, 0)


@dataclass(frozen=True)
class LevelResult:
    """`concurrency` streams started together, `repeat` times."""

    concurrency: int
    repeat: int
    ttft_s: Spread
    prefill_tps: Spread
    decode_tps_per_stream: Spread
    aggregate_decode_tps: Spread
    latency_s: Spread
    prompt_tokens: int
    generated_tokens: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_level(
    url: str,
    alias: str,
    *,
    concurrency: int,
    repeat: int,
    prompt_tokens: int,
    gen_tokens: int,
    api_key: str | None = None,
    on_sample: Any = None,
) -> LevelResult:
    samples: list[Sample] = []
    aggregates: list[float] = []
    for round_ in range(repeat):
        batch = _batch(
            concurrency,
            lambda index, round_=round_: stream_once(
                url,
                alias,
                prompt_tokens=prompt_tokens,
                gen_tokens=gen_tokens,
                api_key=api_key,
                salt=round_ * 1000 + index,
            ),
            on_sample,
        )
        span = max(s.ended for s in batch) - min(s.first_token for s in batch)
        tokens = sum(max(s.generated_tokens - 1, 0) for s in batch)
        aggregates.append(tokens / span if span > 0 else 0.0)
        samples += batch
    return LevelResult(
        concurrency=concurrency,
        repeat=repeat,
        ttft_s=Spread.of([s.ttft_s for s in samples]),
        prefill_tps=Spread.of([s.prefill_tps for s in samples]),
        decode_tps_per_stream=Spread.of([s.decode_tps for s in samples]),
        aggregate_decode_tps=Spread.of(aggregates),
        latency_s=Spread.of([s.total_s for s in samples]),
        prompt_tokens=int(statistics.median([s.prompt_tokens for s in samples])),
        generated_tokens=int(statistics.median([s.generated_tokens for s in samples])),
    )


def _batch(concurrency: int, request: Any, on_sample: Any) -> list[Sample]:
    """`concurrency` requests released together; the first error is raised here."""
    batch: list[Sample] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency)

    def one(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            sample = request(index)
            batch.append(sample)
            if on_sample is not None:
                on_sample(sample)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return batch
