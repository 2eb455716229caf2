"""KV caches of finished requests kept per loaded model, reused by requests sharing a prefix."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

# Prefix caches kept per model (each holds a KV cache) and how long an unused one is kept.
PREFIX_CACHE_ENTRIES = 4
# A cached prefix is reused only when it saves at least this many prompt tokens: checking out an
# entry consumes it, and a short accidental match (the chat template's first tokens) must not
# destroy a long system-prompt cache that the next turn of that conversation needs.
MIN_PREFIX_REUSE = 32
PREFIX_CACHE_TTL_S = 600.0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class _CacheEntry:
    tokens: list[int]
    cache: list[Any]
    last_used: float
    nbytes: int = 0


def cache_nbytes(cache: list[Any]) -> int:
    """Bytes the arrays of a prompt cache hold (what keeping it costs in memory)."""
    total = 0
    for layer in cache:
        with contextlib.suppress(NotImplementedError, AttributeError, TypeError):
            total += int(layer.nbytes)
    return total


class PrefixCache:
    """KV caches of finished requests, reused by requests sharing a prefix (multi-turn chats).

    An entry is checked out exclusively, so concurrent requests never share mutable KV state,
    and checked back in with exactly the tokens the cache has processed.
    """

    def __init__(self, max_entries: int = PREFIX_CACHE_ENTRIES) -> None:
        self.entries: list[_CacheEntry] = []
        self.max_entries = max_entries
        self.evicted_for_memory = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def best(self, prompt: list[int]) -> tuple[_CacheEntry | None, int]:
        """The entry `checkout` would take for `prompt`, and how many tokens it shares."""
        best: _CacheEntry | None = None
        best_len = 0
        for entry in self.entries:
            n = _common_prefix(entry.tokens, prompt)
            if n > best_len:
                best, best_len = entry, n
        if best is not None and min(best_len, len(prompt) - 1) >= MIN_PREFIX_REUSE:
            return best, best_len
        return None, 0

    def checkout(self, model: Any, prompt: list[int]) -> tuple[list[Any], int]:
        from mlx_lm.models.cache import (
            can_trim_prompt_cache,
            make_prompt_cache,
            trim_prompt_cache,
        )

        best, best_len = self.best(prompt)
        if best is not None:
            self.entries.remove(best)
            # At least one prompt token must go through the model to produce logits.
            reuse = min(best_len, len(prompt) - 1)
            extra = len(best.tokens) - reuse
            if reuse > 0 and (extra == 0 or can_trim_prompt_cache(best.cache)):
                if extra > 0:
                    trim_prompt_cache(best.cache, extra)
                return best.cache, reuse
        return make_prompt_cache(model), 0

    def checkin(self, tokens: list[int], cache: list[Any]) -> None:
        self.entries.append(_CacheEntry(tokens, cache, time.monotonic(), cache_nbytes(cache)))
        while len(self.entries) > self.max_entries:
            self.entries.remove(min(self.entries, key=lambda e: e.last_used))

    def expire(self, now: float, ttl: float = PREFIX_CACHE_TTL_S) -> int:
        before = len(self.entries)
        self.entries = [e for e in self.entries if now - e.last_used <= ttl]
        return before - len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
