"""One thread owns MLX and advances all running generations of a model in one batched step.

Omni's handlers run mlx-lm's generator inside the event loop, so a second request waits for the
first to finish. Here every request becomes a row of mlx-lm's `BatchGenerator` (one per loaded
model): each scheduler round runs one forward pass that decodes a token for every running stream
of that model, plus one chunk of any prompt still being prefilled, so a long prompt delays other
streams by at most one chunk and a new request's first token waits for its own prefill only.
All MLX work (loading, prefill, decode, KV-cache reuse, disk cache I/O) happens in this thread.

Admission: at most `max_batch` generations run at once, and a request starts only when its KV
cache (prompt + max_tokens) fits the memory budget next to the running ones and the prefix caches
kept for reuse; kept caches give way first (least recently used), then the request waits, or is
refused with `AdmissionRefused` when it would not fit even alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from local_ai import sizing
from local_ai.server.engine.batchrows import insert_row, new_batch_generator

if TYPE_CHECKING:
    from local_ai.server.engine.diskcache import DiskPromptCache
    from local_ai.server.engine.group import Group
    from local_ai.server.engine.loaded import LoadedModel

log = logging.getLogger("local_ai.engine")

# Prompt tokens processed per scheduler round; bounds how long one prefill holds up other streams.
PREFILL_CHUNK = 512
# Generations decoded together (the manifest's server.engine.max_batch_size overrides it).
DEFAULT_MAX_BATCH = 8
HOUSEKEEPING_INTERVAL_S = 1.0
# A sharded engine's idle rounds: each sends the heartbeat the other ranks wait for.
GROUP_HEARTBEAT_S = 0.5
# Seconds a client refused for memory is told to wait before retrying.
ADMISSION_RETRY_AFTER_S = 5


class GenerationCancelled(BaseException):
    """The client went away. A BaseException so Omni's `except Exception` handlers let it pass."""


class AdmissionRefused(RuntimeError):
    """The request's KV cache would not fit the memory budget even with nothing else running."""

    def __init__(self, message: str, retry_after: int = ADMISSION_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
    stop_sequence: str | None = None  # the stop string that ended the generation


_END = object()
_CANCELLED = object()


@dataclass
class Job:
    """One generation: prompt tokens in, TokenEvents out through a thread-safe queue.

    `kwargs` are mlx-lm generation options: max_tokens, sampler (a callable) or sampling (the
    parameters of mlx-lm's `make_sampler`), logits_processors, plus `stop` (strings that end
    the generation, not emitted) and `seed` (repeatable sampling with `sampling`).
    """

    model: LoadedModel
    prompt: list[int]
    kwargs: dict[str, Any]
    use_prefix_cache: bool = True
    cancelled: threading.Event = field(default_factory=threading.Event)
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.perf_counter)
    # Scheduler-thread state.
    uid: int = -1
    kv_bytes: int = 0
    cached_tokens: int = 0
    disk_tokens: int = 0  # the longest prefix of this prompt already on disk
    started: float = 0.0
    first_token_at: float = 0.0
    generated: int = 0
    detokenizer: Any = None
    held: str = ""  # text not yet sent: it may be the start of a stop string

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

    @property
    def max_tokens(self) -> int:
        return int(self.kwargs.get("max_tokens") or 256)

    @property
    def stops(self) -> list[str]:
        stop = self.kwargs.get("stop") or []
        return [stop] if isinstance(stop, str) else [s for s in stop if s]

    def take_text(self, segment: str, *, final: bool) -> tuple[str, str | None]:
        """(text to send now, the stop string reached or None); holds back a possible stop start."""
        self.held += segment
        stops = self.stops
        hits = [(i, s) for s in stops if (i := self.held.find(s)) >= 0]
        if hits:
            at, stop = min(hits, key=lambda hit: hit[0])
            out, self.held = self.held[:at], ""
            return out, stop
        hold = 0
        if not final:
            for stop in stops:
                for n in range(min(len(stop) - 1, len(self.held)), 0, -1):
                    if self.held.endswith(stop[:n]):
                        hold = max(hold, n)
                        break
        cut = len(self.held) - hold
        out, self.held = self.held[:cut], self.held[cut:]
        return out, None


def _make_sampler(params: dict[str, Any], seed: int | None) -> Callable[[Any], Any] | None:
    """mlx-lm's sampler chain (`make_sampler`) drawing from the request's own random key.

    mlx-lm's compiled samplers read the random state of the thread that imported them, so in
    this thread they return the same token every call; and a seed must hold whatever other
    rows of the batch sample. None means greedy.
    """
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, apply_xtc

    temp = float(params.get("temp") or 0.0)
    if temp <= 0:
        return None
    top_p = float(params.get("top_p") or 0.0)
    min_p = float(params.get("min_p") or 0.0)
    keep = int(params.get("min_tokens_to_keep") or 1)
    top_k = int(params.get("top_k") or 0)
    xtc = float(params.get("xtc_probability") or 0.0)
    xtc_threshold = float(params.get("xtc_threshold") or 0.0)
    key = [mx.random.key(seed if seed is not None else secrets.randbits(32))]

    def sample(logprobs: Any) -> Any:
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        if min_p:
            logprobs = apply_min_p(logprobs, min_p, keep)
        if xtc > 0:
            logprobs = apply_xtc(logprobs, xtc, xtc_threshold, [])
        if top_k > 0:
            logprobs = apply_top_k(logprobs, top_k)
        key[0], sub = mx.random.split(key[0])
        return mx.random.categorical(logprobs * (1 / temp), key=sub)

    return sample


def _job_sampler(job: Job) -> Callable[[Any], Any] | None:
    """The per-row sampler for `job` (None: greedy), with its logits processors folded in.

    mlx-lm 0.31's batch mixes rows with and without processors badly (a None entry is iterated),
    so processors run here, on the row's log-probabilities, with the row's own token history.
    """
    import mlx.core as mx

    seed = job.kwargs.get("seed")
    params = job.kwargs.get("sampling")
    if isinstance(params, dict):
        sampler = _make_sampler(params, seed if isinstance(seed, int) else None)
    else:
        sampler = job.kwargs.get("sampler")  # a ready callable (in-process callers)
    processors = list(job.kwargs.get("logits_processors") or [])
    if not processors:
        return sampler
    base = sampler or (lambda x: mx.argmax(x, axis=-1))
    history = [mx.array(job.prompt)]

    def sample(logprobs: Any) -> Any:
        tokens = mx.concatenate(history)
        for processor in processors:
            logprobs = processor(tokens, logprobs)
        token = base(logprobs)
        history.append(token.reshape(-1))
        return token

    return sample


def kv_bytes_per_token(model: Any) -> int:
    """KV-cache bytes one token takes in `model` (0 when its shape is not known)."""
    from mlx.utils import tree_flatten

    args = getattr(model, "args", None)
    shape = sizing.shape_from_config(vars(args)) if hasattr(args, "__dict__") else None
    if shape is None:
        return 0
    # The cache takes the activations' dtype: the first floating parameter (scales when quantized).
    size = 2
    params: Any = tree_flatten(model.parameters())
    for _, value in params:
        if "float" in str(value.dtype):
            size = int(value.dtype.size)
            break
    return sizing.kv_cache_bytes(shape.num_layers, shape.num_kv_heads, shape.head_dim, 1, size)


def _refusal(tokens: int, need: int, free: int) -> AdmissionRefused:
    def size(n: int) -> str:
        return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"

    return AdmissionRefused(
        f"the KV cache of this request ({tokens} prompt and output tokens, {size(need)}) does "
        f"not fit the {size(max(free, 0))} of memory left for it; shorten the prompt or "
        "max_tokens"
    )


class _ModelBatch:
    """The running generations of one model, as rows of one mlx-lm BatchGenerator."""

    def __init__(self, loaded: LoadedModel, prefill_chunk: int, max_batch: int) -> None:
        self.loaded = loaded
        self.gen: Any = new_batch_generator(
            loaded.model, loaded.tokenizer, max_batch, prefill_chunk
        )
        self.jobs: dict[int, Job] = {}

    def close(self) -> None:
        self.gen.close()


class Scheduler:
    """The MLX thread: runs submitted callables and advances each model's batch by one step."""

    def __init__(
        self,
        prefill_chunk: int = PREFILL_CHUNK,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        memory_budget: int | None = None,
        disk_cache: DiskPromptCache | None = None,
    ) -> None:
        self.prefill_chunk = prefill_chunk
        self.max_batch = max_batch
        self._memory_budget = memory_budget
        self.disk_cache = disk_cache
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._batches: dict[str, _ModelBatch] = {}
        self._thread = threading.Thread(target=self._run, name="mlx-scheduler", daemon=True)
        self._stopping = False
        self.housekeeping: Callable[[], None] | None = None
        # Set once a sharded engine's group formed: every step is mirrored on the other ranks.
        self.group: Group | None = None
        self._group_ops: list[list[Any]] = []
        # Read by /status: batched forward passes that decoded tokens, tokens they decoded, and
        # how many streams the last such pass advanced together.
        self.decode_steps = 0
        self.generated_tokens = 0
        self.batch_size = 0
        self.completed = 0
        self.refused = 0

    @property
    def active(self) -> int:
        """Generations running or waiting for admission."""
        return self.running + len(self._waiting)

    @property
    def running(self) -> int:
        return sum(len(b.jobs) for b in list(self._batches.values()))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def memory_budget(self) -> int:
        """Bytes that model weights plus running KV caches may take (hardware's usable memory)."""
        if self._memory_budget is None:
            from local_ai.hardware import detect

            self._memory_budget = detect().usable_memory_bytes
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int) -> None:
        self._memory_budget = value

    def kv_bytes(self, loaded: LoadedModel, tokens: int) -> int:
        if loaded.kv_bytes_per_token == 0:
            loaded.kv_bytes_per_token = kv_bytes_per_token(loaded.model)
        return loaded.kv_bytes_per_token * tokens

    def check_fits(self, loaded: LoadedModel, tokens: int) -> None:
        """Refuse at once (before a stream starts) a request whose KV cache of `tokens` would
        not fit the budget even with nothing else running; one that fits later waits instead."""
        need = self.kv_bytes(loaded, tokens)
        free = self.memory_budget - loaded.memory_bytes
        if need > free:
            self.refused += 1
            raise _refusal(tokens, need, free)

    def batch_status(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch,
            "running": self.running,
            "waiting": self.waiting,
            "batch_size": self.batch_size,
            "decode_steps": self.decode_steps,
            "generated_tokens": self.generated_tokens,
            "refused_for_memory": self.refused,
            "memory_budget_bytes": self.memory_budget,
            **({"disk_cache": self.disk_cache.status()} if self.disk_cache is not None else {}),
        }

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
            self._drain_inbox(block=not self._batches and not self._waiting)
            self._admit()
            stepped = bool(self._batches)
            for batch in list(self._batches.values()):
                self._step(batch)
            if self.group is not None and not stepped:
                self._tell_group(step=False)  # the heartbeat, with removals still to mirror
            now = time.monotonic()
            if self.housekeeping is not None and now - last_housekeeping > HOUSEKEEPING_INTERVAL_S:
                last_housekeeping = now
                try:
                    self.housekeeping()
                except Exception:
                    log.exception("housekeeping failed")
        for job in [*self._waiting, *(j for b in self._batches.values() for j in b.jobs.values())]:
            job.out.put(_CANCELLED)
        if self.group is not None:
            self.group.send({"stop": True})

    def _tell_group(self, *, step: bool) -> None:
        assert self.group is not None
        ops, self._group_ops = self._group_ops, []
        # Before a step, the step's own evaluation waits for the message (and bounds it).
        self.group.send({"ops": ops, "step": step}, wait=not step)

    def _drain_inbox(self, *, block: bool) -> None:
        timeout = HOUSEKEEPING_INTERVAL_S if block else None
        if block and self.group is not None:
            timeout = GROUP_HEARTBEAT_S
        while True:
            try:
                item = self._inbox.get(block=block, timeout=timeout)
            except queue.Empty:
                return
            block = False  # after the first item, only take what is already there
            if item is None:
                return
            if isinstance(item, Job):
                self._waiting.append(item)
                continue
            fn, fut = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _admit(self) -> None:
        """Start waiting jobs in arrival order while the batch and the memory budget allow."""
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                self.completed += 1
                job.out.put(_CANCELLED)
                continue
            running = [j for b in self._batches.values() for j in b.jobs.values()]
            if len(running) >= self.max_batch:
                return
            tokens = len(job.prompt) + job.max_tokens
            job.kv_bytes = self.kv_bytes(job.model, tokens)
            models = {id(j.model): j.model for j in [*running, job]}
            weights = sum(m.memory_bytes for m in models.values())
            free = self.memory_budget - weights - sum(j.kv_bytes for j in running)
            if job.kv_bytes > free:
                if running:
                    return  # waits for running generations to finish and free their caches
                self._waiting.popleft()
                self.refused += 1
                self.completed += 1
                job.out.put(_refusal(tokens, job.kv_bytes, free))
                continue
            self._waiting.popleft()
            # Kept prefix caches give way to a request that fits without them.
            self._evict_kept(models.values(), job, free - job.kv_bytes)
            try:
                self._start(job)
            except Exception as exc:
                log.exception("starting a generation failed")
                self.completed += 1
                job.out.put(exc)

    @staticmethod
    def _evict_kept(models: Any, job: Job, room: int) -> None:
        """Drop prefix caches kept by `models`, least recently used first, until they take at
        most `room` bytes; never the one `job` will check out (its memory then becomes part of
        the job's own KV cache, already priced)."""
        kept = [(m.prefix_cache, e) for m in models for e in m.prefix_cache.entries]
        if sum(e.nbytes for _, e in kept) <= room:
            return
        own = job.model.prefix_cache.best(job.prompt)[0] if job.use_prefix_cache else None
        kept = sorted(((c, e) for c, e in kept if e is not own), key=lambda ce: ce[1].last_used)
        while kept and sum(e.nbytes for _, e in kept) > room:
            owner, entry = kept.pop(0)
            owner.entries.remove(entry)
            owner.evicted_for_memory += 1

    def _start(self, job: Job) -> None:
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        loaded = job.model
        job.started = time.perf_counter()
        cache: list[Any] | None = None
        if self.group is not None:
            job.use_prefix_cache = False  # the other ranks keep no prefix caches to match
        if job.use_prefix_cache:
            cache, job.cached_tokens = loaded.prefix_cache.checkout(loaded.model, job.prompt)
            if self.disk_cache is not None:
                found = self.disk_cache.lookup(loaded, job.prompt)
                job.disk_tokens = found[1] if found is not None else 0
                # At least one prompt token must go through the model to produce logits.
                usable = min(job.disk_tokens, len(job.prompt) - 1)
                if found is not None and usable > job.cached_tokens:
                    disk = self.disk_cache.load(loaded, *found)
                    if disk is None:
                        job.disk_tokens = 0
                    else:
                        if job.cached_tokens:
                            loaded.prefix_cache.checkin(job.prompt[: job.cached_tokens], cache)
                        trim_prompt_cache(disk, found[1] - usable)
                        cache, job.cached_tokens = disk, usable
        if cache is None:
            cache, job.cached_tokens = make_prompt_cache(loaded.model), 0
        batch = self._batches.get(loaded.path)
        if batch is None or batch.loaded is not loaded:
            batch = self._batches[loaded.path] = _ModelBatch(
                loaded, self.prefill_chunk, self.max_batch
            )
        sampler = _job_sampler(job)
        greedy = sampler is None  # every rank holds the same logits: each picks the token
        if self.group is not None and not greedy:
            sampler = self.group.sampler(sampler)
        job.uid = insert_row(
            batch.gen,
            job.prompt[job.cached_tokens :],
            job.max_tokens,
            cache,
            job.prompt[: job.cached_tokens],
            sampler,
        )
        job.detokenizer = loaded.tokenizer.detokenizer
        batch.jobs[job.uid] = job
        if self.group is not None:
            self._group_ops.append(["insert", job.uid, job.prompt, job.max_tokens, greedy])

    def _step(self, batch: _ModelBatch) -> None:
        cancelled = [uid for uid, job in batch.jobs.items() if job.cancelled.is_set()]
        if cancelled:
            # A client that hangs up (an editor's Stop) still leaves its prefix for the next turn.
            for uid, (cache, tokens) in batch.gen.remove(cancelled, True).items():
                self._finish(batch, batch.jobs[uid], _CANCELLED, cache, tokens)
            self._removed(cancelled)
        if batch.jobs:
            try:
                if self.group is not None:
                    self._tell_group(step=True)
                with self.group.step_guard() if self.group else contextlib.nullcontext():
                    _, responses = batch.gen.next()
            except Exception as exc:
                log.exception("generation failed")
                if self.group is not None:  # the ranks may no longer hold the same batch
                    self.group.end(f"a generation step failed: {type(exc).__name__}: {exc}")
                for job in list(batch.jobs.values()):
                    self._finish(batch, job, exc, None, None)
                responses = []
            if responses:
                self.decode_steps += 1
                self.generated_tokens += len(responses)
                self.batch_size = len(responses)
            for response in responses:
                self._emit(batch, batch.jobs[response.uid], response)
        if not batch.jobs:
            batch.close()
            self._batches.pop(batch.loaded.path, None)

    def _emit(self, batch: _ModelBatch, job: Job, response: Any) -> None:
        import mlx.core as mx

        now = time.perf_counter()
        if not job.first_token_at:
            job.first_token_at = now
        job.generated += 1
        finish = response.finish_reason
        # As stream_generate: an end token is not text; the last event carries what is left.
        if finish != "stop":
            job.detokenizer.add_token(response.token)
        if finish is not None:
            job.detokenizer.finalize()
        text, stopped = job.take_text(job.detokenizer.last_segment, final=finish is not None)
        if stopped is not None:
            finish = "stop"
        processed = len(job.prompt) - job.cached_tokens
        prefill_s = max(job.first_token_at - job.started, 1e-9)
        job.out.put(
            TokenEvent(
                text=text,
                token=int(response.token),
                finish_reason=finish,
                prompt_tokens=processed,
                cached_tokens=job.cached_tokens,
                generation_tokens=job.generated,
                prompt_tps=processed / prefill_s,
                generation_tps=job.generated / max(now - job.first_token_at, 1e-9),
                peak_memory=mx.get_peak_memory() / 1e9,
                stop_sequence=stopped,
            )
        )
        if finish is None:
            return
        if response.finish_reason is None:  # a stop string: the row is still in the batch
            cache, tokens = batch.gen.remove([job.uid], True)[job.uid]
            self._removed([job.uid])
        else:
            cache, tokens = response.prompt_cache, response.all_tokens
        self._finish(batch, job, _END, cache, tokens)

    def _removed(self, uids: list[int]) -> None:
        if self.group is not None:
            self._group_ops.append(["remove", uids])

    def _finish(
        self,
        batch: _ModelBatch,
        job: Job,
        outcome: Any,
        cache: list[Any] | None,
        tokens: list[int] | None,
    ) -> None:
        batch.jobs.pop(job.uid, None)
        if job.use_prefix_cache and cache is not None and tokens:
            if self.disk_cache is not None and outcome is _END:
                self.disk_cache.maybe_save(job.model, job.prompt, job.disk_tokens, cache, tokens)
            job.model.prefix_cache.checkin(list(tokens), cache)
        self.completed += 1
        job.out.put(outcome)
