"""One thread owns MLX and advances every running generation by one step in turn.

Omni's handlers run mlx-lm's generator inside the event loop, so a second request waits for the
first to finish. Here each request's `stream_generate` generator lives in this thread and gets
one token per round (long prompts are prefilled in chunks, one chunk per round), so a new
request's first token arrives after its own prefill plus one step of each other stream. All MLX
work (loading, prefill, decode, KV-cache reuse) happens in this thread, never concurrently.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_ai.server.engine.models import LoadedModel

log = logging.getLogger("local_ai.engine")

# Prompt tokens processed per scheduler round; bounds how long one prefill holds up other streams.
PREFILL_CHUNK = 512
# Prefix caches kept per model (each holds a KV cache) and how long an unused one is kept.
PREFIX_CACHE_ENTRIES = 4
# A cached prefix is reused only when it saves at least this many prompt tokens: checking out an
# entry consumes it, and a short accidental match (the chat template's first tokens) must not
# destroy a long system-prompt cache that the next turn of that conversation needs.
MIN_PREFIX_REUSE = 32
PREFIX_CACHE_TTL_S = 600.0
HOUSEKEEPING_INTERVAL_S = 1.0


class GenerationCancelled(BaseException):
    """The client went away. A BaseException so Omni's `except Exception` handlers let it pass."""


@dataclass
class TokenEvent:
    text: str
    token: int
    finish_reason: str | None
    prompt_tokens: int  # prompt tokens processed by the model (after prefix-cache reuse)
    cached_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    peak_memory: float


_END = object()
_CANCELLED = object()


@dataclass
class Job:
    """One generation: prompt tokens in, TokenEvents out through a thread-safe queue."""

    model: LoadedModel
    prompt: list[int]
    kwargs: dict[str, Any]
    use_prefix_cache: bool = True
    cancelled: threading.Event = field(default_factory=threading.Event)
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.perf_counter)
    # Scheduler-thread state.
    cache: list[Any] | None = None
    pending: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    prefill_started: float = 0.0
    gen: Iterator[Any] | None = None
    fed: list[int] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled.set()

    def events(self) -> Iterator[TokenEvent]:
        """Blocking iterator for the request thread; raises what the scheduler reported."""
        while True:
            item = self.out.get()
            if item is _END:
                return
            if item is _CANCELLED:
                raise GenerationCancelled
            if isinstance(item, BaseException):
                raise item
            yield item


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


class PrefixCache:
    """KV caches of finished requests, reused by requests sharing a prefix (multi-turn chats).

    An entry is checked out exclusively, so concurrent requests never share mutable KV state,
    and checked back in with exactly the tokens the cache has processed.
    """

    def __init__(self, max_entries: int = PREFIX_CACHE_ENTRIES) -> None:
        self.entries: list[_CacheEntry] = []
        self.max_entries = max_entries

    def checkout(self, model: Any, prompt: list[int]) -> tuple[list[Any], int]:
        from mlx_lm.models.cache import (
            can_trim_prompt_cache,
            make_prompt_cache,
            trim_prompt_cache,
        )

        best: _CacheEntry | None = None
        best_len = 0
        for entry in self.entries:
            n = _common_prefix(entry.tokens, prompt)
            if n > best_len:
                best, best_len = entry, n
        if best is not None and min(best_len, len(prompt) - 1) >= MIN_PREFIX_REUSE:
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
        self.entries.append(_CacheEntry(tokens, cache, time.monotonic()))
        while len(self.entries) > self.max_entries:
            self.entries.remove(min(self.entries, key=lambda e: e.last_used))

    def expire(self, now: float, ttl: float = PREFIX_CACHE_TTL_S) -> int:
        before = len(self.entries)
        self.entries = [e for e in self.entries if now - e.last_used <= ttl]
        return before - len(self.entries)

    def clear(self) -> None:
        self.entries.clear()


class Scheduler:
    """The MLX thread: runs submitted callables and advances jobs round-robin."""

    def __init__(self, prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.prefill_chunk = prefill_chunk
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._active: list[Job] = []
        self._thread = threading.Thread(target=self._run, name="mlx-scheduler", daemon=True)
        self._stopping = False
        self.housekeeping: Callable[[], None] | None = None
        self.steps = 0
        self.completed = 0

    @property
    def active(self) -> int:
        return len(self._active)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(None)

    def submit(self, job: Job) -> None:
        self._inbox.put(job)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run `fn` in the MLX thread between steps; the future carries its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put((fn, fut))
        return fut

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        last_housekeeping = 0.0
        while not self._stopping:
            self._drain_inbox(block=not self._active)
            for job in list(self._active):
                self._advance(job)
            now = time.monotonic()
            if self.housekeeping is not None and now - last_housekeeping > HOUSEKEEPING_INTERVAL_S:
                last_housekeeping = now
                try:
                    self.housekeeping()
                except Exception:
                    log.exception("housekeeping failed")
        for job in self._active:
            job.out.put(_CANCELLED)

    def _drain_inbox(self, *, block: bool) -> None:
        timeout = HOUSEKEEPING_INTERVAL_S if block else None
        while True:
            try:
                item = self._inbox.get(block=block, timeout=timeout)
            except queue.Empty:
                return
            block = False  # after the first item, only take what is already there
            if item is None:
                return
            if isinstance(item, Job):
                if item.cancelled.is_set():
                    item.out.put(_CANCELLED)
                else:
                    self._active.append(item)
                continue
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _finish(self, job: Job, outcome: Any, *, keep_cache: bool) -> None:
        if job in self._active:
            self._active.remove(job)
        if job.gen is not None:
            close = getattr(job.gen, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a generation failed")
        if keep_cache and job.use_prefix_cache and job.cache is not None:
            job.model.prefix_cache.checkin(job.prompt + job.fed, job.cache)
        self.completed += 1
        job.out.put(outcome)

    def _advance(self, job: Job) -> None:
        if job.cancelled.is_set():
            # Between steps the cache holds exactly prompt + fed tokens once prefill is done, so
            # a client that hangs up (an editor's Stop) still leaves its prefix for the next turn.
            self._finish(job, _CANCELLED, keep_cache=job.gen is not None)
            return
        try:
            if job.gen is None and not self._prefill(job):
                return
            assert job.gen is not None
            resp = next(job.gen)
        except StopIteration:
            self._finish(job, _END, keep_cache=True)
            return
        except Exception as exc:
            log.exception("generation failed")
            self._finish(job, exc, keep_cache=False)
            return
        self.steps += 1
        job.fed.append(int(resp.token))
        job.out.put(
            TokenEvent(
                text=resp.text,
                token=int(resp.token),
                finish_reason=resp.finish_reason,
                prompt_tokens=len(job.prompt) - job.cached_tokens,
                cached_tokens=job.cached_tokens,
                generation_tokens=resp.generation_tokens,
                prompt_tps=resp.prompt_tps,
                generation_tps=resp.generation_tps,
                peak_memory=resp.peak_memory,
            )
        )
        if resp.finish_reason is not None:
            self._finish(job, _END, keep_cache=True)

    def _prefill(self, job: Job) -> bool:
        """Process one chunk of the prompt; True once the token generator is ready."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream, stream_generate
        from mlx_lm.models.cache import make_prompt_cache

        loaded = job.model
        if job.cache is None:
            job.prefill_started = time.perf_counter()
            if job.use_prefix_cache:
                job.cache, job.cached_tokens = loaded.prefix_cache.checkout(
                    loaded.model, job.prompt
                )
            else:
                job.cache, job.cached_tokens = make_prompt_cache(loaded.model), 0
            job.pending = job.prompt[job.cached_tokens :]
        if len(job.pending) > self.prefill_chunk + 1:
            chunk, job.pending = (
                job.pending[: self.prefill_chunk],
                job.pending[self.prefill_chunk :],
            )
            with mx.stream(generation_stream):
                loaded.model(mx.array(chunk)[None], cache=job.cache)
                mx.eval([c.state for c in job.cache])
            return False
        # The cache now holds all but the last len(pending) prompt tokens; stream_generate
        # processes those and samples.
        job.gen = stream_generate(
            loaded.model,
            loaded.tokenizer,
            mx.array(job.pending),
            prompt_cache=job.cache,
            **job.kwargs,
        )
        return True
