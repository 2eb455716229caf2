"""The engine's MLX thread in-process with a real tiny model: interleaving, chunked prefill and
prefix-cache reuse give the same tokens as mlx-lm alone; models unload by LRU and idle TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_ai.server.engine.models import ModelRegistry
from local_ai.server.engine.scheduler import GenerationCancelled, Job, Scheduler
from tests.server_helpers import build_chat_model, wait_for


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("engine-models")
    return build_chat_model(base / "a"), build_chat_model(base / "b", seed=1)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    mlx_thread = Scheduler(prefill_chunk=16)
    mlx_thread.start()
    yield mlx_thread
    mlx_thread.stop()


def greedy(n: int) -> dict[str, Any]:
    from mlx_lm.sample_utils import make_sampler

    return {"max_tokens": n, "sampler": make_sampler(temp=0.0)}


def reference(path: Path, prompt: list[int], n: int) -> list[int]:
    from mlx_lm import load
    from mlx_lm.generate import stream_generate

    model, tokenizer = load(str(path))[:2]
    return [r.token for r in stream_generate(model, tokenizer, prompt, **greedy(n))]


def run_jobs(*jobs: Job) -> list[list[int]]:
    return [[e.token for e in job.events()] for job in jobs]


def test_interleaved_chunked_and_cached_generation_match_mlx_lm(
    scheduler: Scheduler, model_paths: tuple[Path, Path]
) -> None:
    registry = ModelRegistry(scheduler, max_loaded=2, idle_ttl_s=0)
    path = str(model_paths[0])
    loaded = asyncio.run(registry.acquire(path))
    prompt = loaded.tokenizer.encode("The weather in Paris is mild in spring. " * 6)
    assert len(prompt) > 3 * scheduler.prefill_chunk  # exercises chunked prefill
    expected = reference(model_paths[0], prompt, 40)

    # Two requests at once: both complete, each with exactly mlx-lm's tokens.
    long = Job(model=loaded, prompt=prompt, kwargs=greedy(40))
    short = Job(model=loaded, prompt=prompt[:20], kwargs=greedy(5))
    scheduler.submit(long)
    scheduler.submit(short)
    long_tokens, short_tokens = run_jobs(long, short)
    assert long_tokens == expected
    assert short_tokens == reference(model_paths[0], prompt[:20], 5)

    # The same prompt again reuses the cached prefix and still yields the same tokens.
    again = Job(model=loaded, prompt=prompt, kwargs=greedy(40))
    scheduler.submit(again)
    events = list(again.events())
    assert events[0].cached_tokens >= len(prompt) - 1
    assert [e.token for e in events] == expected
    assert events[-1].finish_reason == "length"
    registry.release(loaded)


def test_streams_interleave_and_cancel(
    scheduler: Scheduler, model_paths: tuple[Path, Path]
) -> None:
    registry = ModelRegistry(scheduler, max_loaded=2, idle_ttl_s=0)
    loaded = asyncio.run(registry.acquire(str(model_paths[0])))
    prompt = loaded.tokenizer.encode("hello there")
    first = Job(model=loaded, prompt=prompt, kwargs=greedy(3000))
    scheduler.submit(first)
    stream = first.events()
    next(stream)
    second = Job(model=loaded, prompt=prompt, kwargs=greedy(3))
    scheduler.submit(second)
    assert len(run_jobs(second)[0]) == 3  # done while the first is still generating
    assert scheduler.active == 1
    first.cancel()
    with pytest.raises(GenerationCancelled):
        for _ in stream:
            pass
    assert wait_for(lambda: scheduler.active == 0, 20)
    registry.release(loaded)


def test_a_cancelled_stream_leaves_its_prefix_for_the_next_turn(
    scheduler: Scheduler, model_paths: tuple[Path, Path]
) -> None:
    registry = ModelRegistry(scheduler, max_loaded=2, idle_ttl_s=0)
    loaded = asyncio.run(registry.acquire(str(model_paths[0])))
    prompt = loaded.tokenizer.encode("The weather in Paris is mild in spring. " * 4)
    expected = reference(model_paths[0], prompt, 10)
    first = Job(model=loaded, prompt=prompt, kwargs=greedy(3000))
    scheduler.submit(first)
    stream = first.events()
    for _ in range(3):
        next(stream)
    first.cancel()  # the client hung up (an editor's Stop)
    with pytest.raises(GenerationCancelled):
        for _ in stream:
            pass
    assert wait_for(lambda: scheduler.active == 0, 20)
    again = Job(model=loaded, prompt=prompt, kwargs=greedy(10))
    scheduler.submit(again)
    events = list(again.events())
    assert events[0].cached_tokens >= len(prompt) - 1  # reused, and still exactly mlx-lm's
    assert [e.token for e in events] == expected
    registry.release(loaded)


def test_models_unload_by_lru_and_idle_ttl(
    scheduler: Scheduler, model_paths: tuple[Path, Path]
) -> None:
    registry = ModelRegistry(scheduler, max_loaded=1, idle_ttl_s=1)
    a, b = (str(p) for p in model_paths)
    first = asyncio.run(registry.acquire(a))
    registry.release(first)
    second = asyncio.run(registry.acquire(b))
    loaded = {m["path"] for m in registry.status() if m["loaded"]}
    assert loaded == {b}  # a was the least recently used
    assert second.memory_bytes > 0
    registry.release(second)
    assert wait_for(lambda: not registry.status(), 20)  # idle longer than the TTL: unloaded
    with pytest.raises(FileNotFoundError):
        asyncio.run(registry.acquire(str(model_paths[0].parent / "missing")))


def test_a_short_accidental_prefix_match_keeps_the_long_cached_prefix(tmp_path: Path) -> None:
    """Another conversation sharing only the chat template's first tokens must not consume (and
    trim) the cache of a long system prompt; the next turn of that conversation reuses it."""
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    from local_ai.server.engine.prefixcache import MIN_PREFIX_REUSE, PrefixCache
    from tests.harness import tinymodels as tm

    model = load(str(tm.build_model(tmp_path / "m", "qwen3")))[0]
    cache = PrefixCache()
    system = list(range(10, 10 + 4 * MIN_PREFIX_REUSE))
    cache.checkin(system, make_prompt_cache(model))
    other = [*system[:3], 999, 998, 997]
    _, reused = cache.checkout(model, other)
    assert reused == 0 and len(cache.entries) == 1  # a fresh cache; the long entry stays
    _, reused = cache.checkout(model, [*system, 5, 6])
    assert reused == len(system) and not cache.entries
