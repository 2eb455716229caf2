"""Time one streamed generation through the gateway: time to first token and decode rate."""

from __future__ import annotations

import json
import time
from typing import Any

from local_ai.errors import ServerError

# A prompt of roughly `n` tokens: short common words are about one token each.
_WORDS = ("the", "model", "reads", "this", "text", "and", "counts", "each", "word", "once")


def prompt_of(tokens: int) -> str:
    words = [_WORDS[i % len(_WORDS)] for i in range(max(1, tokens - 8))]
    return "Summarise: " + " ".join(words)


def bench_alias(
    url: str,
    alias: str,
    *,
    prompt_tokens: int,
    gen_tokens: int,
    api_key: str | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Stream one chat completion and time it. Usage figures come from the server."""
    import httpx

    body = {
        "model": alias,
        "messages": [{"role": "user", "content": prompt_of(prompt_tokens)}],
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
                if data.get("usage"):
                    usage = data["usage"]
    except httpx.HTTPError as exc:
        raise ServerError(f"benchmark request for {alias} failed: {exc}") from exc
    end = time.perf_counter()
    generated = int(usage.get("completion_tokens") or chunks)
    ttft = (first or end) - start
    decode_s = max(end - (first or end), 1e-9)
    return {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "generated_tokens": generated,
        "ttft_s": round(ttft, 4),
        "decode_tokens_per_second": round(max(generated - 1, 0) / decode_s, 2),
        "total_s": round(end - start, 4),
    }
