"""Batched decoding in the engine's MLX thread with a real tiny model: a mixed batch gives every
request its output alone, memory admission waits or refuses, and the on-disk prompt cache is
reused after a restart while corrupt, stale or foreign files are removed, never served."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_ai.server.engine.diskcache import DiskPromptCache, model_key, prefix_hash
from local_ai.server.engine.loaded import LoadedModel
from local_ai.server.engine.models import ModelRegistry
from local_ai.server.engine.scheduler import (
    AdmissionRefused,
    GenerationCancelled,
    Job,
    Scheduler,
    TokenEvent,
)
from tests.server_helpers import build_chat_model, wait_for

CHUNK = 16


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("batch-models")
    return build_chat_model(base / "a"), build_chat_model(base / "b", seed=1)


class Engine:
    """A scheduler thread and a model registry, as one engine process holds them."""

    def __init__(self, idle_ttl_s: int = 0, **scheduler: Any) -> None:
        self.scheduler = Scheduler(prefill_chunk=CHUNK, **scheduler)
        self.registry = ModelRegistry(self.scheduler, max_loaded=2, idle_ttl_s=idle_ttl_s)
        self.scheduler.start()
        self.held: list[LoadedModel] = []

    def model(self, path: Path) -> LoadedModel:
        loaded = asyncio.run(self.registry.acquire(str(path)))
        self.held.append(loaded)
        return loaded

    def run(self, *jobs: Job) -> list[list[TokenEvent]]:
        for job in jobs:
            self.scheduler.submit(job)
        return [list(job.events()) for job in jobs]

    def stop(self) -> None:
        for loaded in self.held:
            self.registry.release(loaded)
        self.scheduler.stop()


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine()
    yield e
    e.stop()


def options(n: int) -> dict[str, Any]:
    """Greedy, as Omni's adapters pass a temperature of 0."""
    return {"max_tokens": n, "sampling": {"temp": 0.0, "top_p": 1.0, "top_k": 0}}


def sampled(n: int, seed: int) -> dict[str, Any]:
    return {"max_tokens": n, "sampling": {"temp": 0.8, "top_p": 0.95, "top_k": 0}, "seed": seed}


def text(events: list[TokenEvent]) -> str:
    return "".join(e.text for e in events)


def reference(path: Path, prompt: list[int], n: int) -> list[int]:
    from mlx_lm import load
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(path))[:2]
    return [
        r.token
        for r in stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=make_sampler(0.0))
    ]


def test_a_mixed_batch_gives_each_request_its_output_alone(
    engine: Engine, model_paths: tuple[Path, Path]
) -> None:
    loaded = engine.model(model_paths[0])
    encode = loaded.tokenizer.encode
    prompts = [
        encode("Hi"),
        encode("The weather in Paris is mild in spring. " * 5),  # prefilled in chunks
        encode("Tell me a story about a lighthouse keeper."),
        encode("Once upon a time, " * 3),
    ]

    def jobs() -> list[Job]:
        return [
            Job(model=loaded, prompt=prompts[0], kwargs=options(12)),
            Job(model=loaded, prompt=prompts[1], kwargs=options(30)),
            Job(model=loaded, prompt=prompts[2], kwargs=sampled(25, seed=7)),
            Job(model=loaded, prompt=prompts[3], kwargs=options(40)),
        ]

    alone = [engine.run(job)[0] for job in jobs()]
    assert [e.token for e in alone[0]] == reference(model_paths[0], prompts[0], 12)
    assert [e.token for e in alone[1]] == reference(model_paths[0], prompts[1], 30)
    # A stop string taken from the middle of the last request's output alone.
    full = text(alone[3])
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip() and full.find(stop) > 0

    batch = jobs()
    batch[3].kwargs["stop"] = [stop, "never-produced"]
    unread = encode("A long answer that nobody reads")
    cancelled = Job(model=loaded, prompt=unread, kwargs=options(3000))
    steps_before = engine.scheduler.decode_steps
    for job in [cancelled, *batch]:
        engine.scheduler.submit(job)
    stream = cancelled.events()
    for _ in range(3):
        next(stream)
    cancelled.cancel()  # the client went away midway
    with pytest.raises(GenerationCancelled):
        for _ in stream:
            pass
    results = [list(job.events()) for job in batch]
    steps = engine.scheduler.decode_steps - steps_before

    for alone_events, batched in zip(alone[:3], results[:3], strict=True):
        assert [e.token for e in batched] == [e.token for e in alone_events]
        assert text(batched) == text(alone_events)
        assert batched[-1].finish_reason == "length"
    # Seeded sampling repeats while other rows sample in the same steps; another seed differs.
    assert [e.token for e in results[2]] != reference(model_paths[0], prompts[2], 25)
    (other_seed,) = engine.run(Job(model=loaded, prompt=prompts[2], kwargs=sampled(25, seed=8)))
    assert [e.token for e in other_seed] != [e.token for e in results[2]]
    stopped = results[3]
    assert text(stopped) == full[: full.find(stop)]
    assert stopped[-1].finish_reason == "stop"
    assert stopped[-1].stop_sequence == stop
    assert [e.token for e in stopped] == [e.token for e in alone[3][: len(stopped)]]
    # Rows advance together: far fewer forward passes than tokens.
    generated = sum(len(r) for r in results) + 3
    assert steps < 0.6 * generated
    assert wait_for(lambda: engine.scheduler.active == 0, 20)


def test_a_sampled_row_joining_after_a_greedy_row_ended_keeps_its_own_sampler(
    engine: Engine, model_paths: tuple[Path, Path]
) -> None:
    """mlx-lm 0.31 leaves a batch of greedy rows a stale sampler slot when one ends: a sampled
    row joining then must still draw its own tokens (it drew others' once, seen under load)."""
    loaded = engine.model(model_paths[0])
    encode = loaded.tokenizer.encode
    short, seeded = encode("two rivers"), encode("five")
    long_running = Job(model=loaded, prompt=encode("a long story"), kwargs=options(3000))
    ended = Job(model=loaded, prompt=short, kwargs=options(4))
    for job in (long_running, ended):
        engine.scheduler.submit(job)
    assert len(list(ended.events())) == 4  # ended: its row left the batch, the other runs on
    (joined,) = engine.run(Job(model=loaded, prompt=seeded, kwargs=sampled(16, seed=5)))
    long_running.cancel()  # still running when the sampled row ended: it joined that batch
    with pytest.raises(GenerationCancelled):
        list(long_running.events())

    (alone,) = engine.run(Job(model=loaded, prompt=seeded, kwargs=sampled(16, seed=5)))
    assert len(joined) == 16 and joined[-1].finish_reason == "length"
    assert [e.token for e in joined] == [e.token for e in alone]


def test_a_request_that_does_not_fit_waits_or_is_refused(model_paths: tuple[Path, Path]) -> None:
    probe = Engine()
    loaded = probe.model(model_paths[0])
    per_token = probe.scheduler.kv_bytes(loaded, 1)
    probe.stop()
    assert per_token > 0
    # Room for the weights and 300 tokens of KV cache.
    engine = Engine(memory_budget=loaded.memory_bytes + 300 * per_token)
    try:
        loaded = engine.model(model_paths[0])
        prompt = loaded.tokenizer.encode("Hello there")
        with pytest.raises(AdmissionRefused) as refused:
            engine.scheduler.check_fits(loaded, 400)
        assert refused.value.retry_after > 0 and "does not fit" in str(refused.value)
        too_big = Job(model=loaded, prompt=prompt, kwargs=options(400))
        first = Job(model=loaded, prompt=prompt, kwargs=options(150))
        second = Job(model=loaded, prompt=prompt, kwargs=options(150))
        engine.scheduler.submit(too_big)
        with pytest.raises(AdmissionRefused):
            next(too_big.events())
        engine.scheduler.submit(first)
        events = first.events()
        next(events)
        engine.scheduler.submit(second)
        # Both fit alone, not together: the second waits for the first's cache to be freed.
        assert wait_for(lambda: engine.scheduler.waiting == 1, 10)
        assert engine.scheduler.running == 1
        assert len(list(events)) == 149
        assert len(list(second.events())) == 150
        assert engine.scheduler.batch_status()["refused_for_memory"] >= 2
    finally:
        engine.stop()


def test_kept_prefix_caches_give_way_to_a_request_that_fits(model_paths: tuple[Path, Path]) -> None:
    probe = Engine()
    loaded = probe.model(model_paths[0])
    per_token = probe.scheduler.kv_bytes(loaded, 1)
    probe.stop()
    room = 400 * per_token  # for KV caches, running or kept
    engine = Engine(memory_budget=loaded.memory_bytes + room)
    try:
        loaded = engine.model(model_paths[0])
        kept = loaded.prefix_cache

        def story(i: int) -> list[int]:
            return list(loaded.tokenizer.encode(f"Story {i}: " + "once upon a time " * 12))

        first_answers = []
        for i in range(3):  # three unrelated conversations, ~150 tokens of cache each
            (events,) = engine.run(Job(model=loaded, prompt=story(i), kwargs=options(40)))
            first_answers.append([e.token for e in events])
            assert kept.nbytes <= room, (i, kept.nbytes, room)
        assert len(kept.entries) == 2 and kept.evicted_for_memory == 1
        # The oldest gave way; the newest conversation's next turn still reuses its cache.
        assert [e.tokens[: len(story(i))] for e, i in zip(kept.entries, (1, 2), strict=True)] == [
            story(1),
            story(2),
        ]
        turn = story(2) + first_answers[2] + list(loaded.tokenizer.encode(" And then?"))
        (events,) = engine.run(Job(model=loaded, prompt=turn, kwargs=options(20)))
        assert events[-1].cached_tokens >= len(story(2)), events[-1]
        assert kept.evicted_for_memory == 1  # it fitted next to the other kept cache
        # A request that needs nearly all the room makes every kept cache give way, and runs.
        big = story(9)
        (events,) = engine.run(Job(model=loaded, prompt=big, kwargs=options(380 - len(big))))
        assert len(events) == 380 - len(big) and events[-1].finish_reason == "length"
        assert kept.evicted_for_memory == 3
        assert [len(e.tokens) for e in kept.entries] == [380]
        assert engine.scheduler.batch_status()["refused_for_memory"] == 0
        (status,) = engine.registry.status()
        assert status["cached_prefix_bytes"] == 380 * per_token
        assert status["prefixes_evicted_for_memory"] == 3
    finally:
        engine.stop()


async def post(app: Any, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """One request straight to the engine's ASGI app; status, headers and the JSON body."""
    chunks = [json.dumps(body).encode()]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"x-local-ai-context", b"4096")],
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body_bytes = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, json.loads(body_bytes)


def test_the_engine_refuses_what_cannot_fit_with_503_and_retry_after(
    tmp_path: Path, model_paths: tuple[Path, Path]
) -> None:
    from local_ai.server.aliases import AliasEntry, AliasMap, save_alias_map
    from local_ai.server.engine.app import EngineApp, EngineConfig

    path = str(model_paths[0])
    aliases = tmp_path / "aliases.json"
    save_alias_map(aliases, AliasMap(models={"tiny": AliasEntry(path=path)}))
    app = EngineApp(EngineConfig(socket=str(tmp_path / "engine.sock"), aliases_file=str(aliases)))
    app.scheduler.start()
    try:
        loaded = asyncio.run(app.registry.acquire(path))
        app.registry.release(loaded)
        app.scheduler.memory_budget = loaded.memory_bytes + 200 * app.scheduler.kv_bytes(loaded, 1)
        messages = [{"role": "user", "content": "Hello"}]
        for route, body in (
            ("/v1/chat/completions", {"model": path, "messages": messages, "max_tokens": 500}),
            (
                "/v1/chat/completions",
                {"model": path, "messages": messages, "max_tokens": 500, "stream": True},
            ),
            (
                "/anthropic/v1/messages",
                {"model": path, "messages": messages, "max_tokens": 500, "stream": True},
            ),
        ):
            status, headers, answer = asyncio.run(post(app, route, body))
            assert status == 503, answer
            assert int(headers["retry-after"]) > 0
            assert "does not fit" in json.dumps(answer)
        # What fits is served by the same engine (greedy: all 5 tokens, no sampled end token).
        small = {"model": path, "messages": messages, "max_tokens": 5, "temperature": 0}
        status, _, answer = asyncio.run(post(app, "/v1/chat/completions", small))
        assert status == 200 and answer["usage"]["completion_tokens"] == 5
    finally:
        app.scheduler.stop()
        app.pool.shutdown(wait=False)


# --- the disk prompt cache ---------------------------------------------------------------------


def encode(path: Path, text: str) -> list[int]:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    return list(load_tokenizer(path).encode(text))


def long_prompt(path: Path) -> list[int]:
    tokens = encode(path, "The weather in Paris is mild in spring. " * 12)
    assert len(tokens) > 80
    return tokens


def fresh_engine_run(
    directory: Path, path: Path, prompt: list[int], n: int, max_bytes: int = 64 * 1024 * 1024
) -> tuple[list[TokenEvent], dict[str, Any]]:
    """One request on a newly started engine (nothing in memory): its events and batch status."""
    engine = Engine(disk_cache=DiskPromptCache(directory, max_bytes, min_tokens=64))
    try:
        (events,) = engine.run(Job(model=engine.model(path), prompt=prompt, kwargs=options(n)))
        return events, engine.scheduler.batch_status()
    finally:
        engine.stop()


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*/*.safetensors"))


def test_a_long_prefix_is_reused_from_disk_after_a_restart(
    tmp_path: Path, model_paths: tuple[Path, Path]
) -> None:
    directory = tmp_path / "prompts"
    path = model_paths[0]
    prompt = long_prompt(path)
    fresh_engine_run(directory, path, prompt, 4)
    (saved,) = cache_files(directory)
    assert saved.name == f"{len(prompt)}-{prefix_hash(prompt)}.safetensors"

    turn = prompt + encode(path, " And in summer?")
    engine = Engine(disk_cache=DiskPromptCache(directory, 64 * 1024 * 1024, min_tokens=64))
    try:
        loaded = engine.model(path)
        (events,) = engine.run(Job(model=loaded, prompt=turn, kwargs=options(20)))
        assert events[0].cached_tokens == len(prompt)
        assert events[0].prompt_tokens == len(turn) - len(prompt)
        assert [e.token for e in events] == reference(path, turn, 20)
        assert engine.scheduler.batch_status()["disk_cache"]["hits"] == 1
        # A prompt whose prefix is on disk already (less than min_tokens new) writes nothing.
        engine.run(Job(model=loaded, prompt=turn, kwargs=options(2)))
        assert len(cache_files(directory)) == 1
    finally:
        engine.stop()
    # The very same prompt again: all but its last token come from disk, and nothing is written.
    events, status = fresh_engine_run(directory, path, prompt, 4)
    assert events[0].cached_tokens == len(prompt) - 1 and status["disk_cache"]["saves"] == 0
    assert [e.token for e in events] == reference(path, prompt, 4)


def test_a_model_unloaded_by_idle_ttl_reuses_its_prefix_from_disk(
    tmp_path: Path, model_paths: tuple[Path, Path]
) -> None:
    path = model_paths[0]
    prompt = long_prompt(path)
    engine = Engine(idle_ttl_s=1, disk_cache=DiskPromptCache(tmp_path, 2**26, min_tokens=64))
    try:
        loaded = asyncio.run(engine.registry.acquire(str(path)))
        engine.run(Job(model=loaded, prompt=prompt, kwargs=options(2)))
        engine.registry.release(loaded)
        assert wait_for(lambda: not engine.registry.status(), 10)  # unloaded: memory cache gone
        again = engine.model(path)
        turn = [*prompt, 7]
        (events,) = engine.run(Job(model=again, prompt=turn, kwargs=options(6)))
        assert events[0].cached_tokens == len(prompt)
        assert [e.token for e in events] == reference(path, turn, 6)
    finally:
        engine.stop()


def test_corrupt_stale_and_foreign_cache_files_are_removed_never_served(
    tmp_path: Path, model_paths: tuple[Path, Path]
) -> None:
    directory = tmp_path / "prompts"
    a = Path(shutil.copytree(model_paths[0], tmp_path / "a"))
    b = Path(shutil.copytree(model_paths[1], tmp_path / "b"))
    os.utime(b / "model.safetensors", ns=(1, 10**18))  # copies keep mtimes: make the keys differ
    prompt = long_prompt(a)
    turn = prompt + encode(a, " Why?")
    expected = reference(a, turn, 8)
    for model in (a, b):
        fresh_engine_run(directory, model, prompt, 2)
    (file_a,) = (directory / model_key(str(a))).glob("*.safetensors")
    (file_b,) = (directory / model_key(str(b))).glob("*.safetensors")

    # Model b's file under model a's key (same name, as a copy or a bug would leave it).
    file_a.write_bytes(file_b.read_bytes())
    events, _ = fresh_engine_run(directory, a, turn, 8)
    assert events[0].cached_tokens == 0 and [e.token for e in events] == expected
    assert not file_a.exists()

    # A truncated file and a stray file: removed, and the request still answers correctly.
    for file in cache_files(directory):
        file.unlink()
    fresh_engine_run(directory, a, prompt, 2)
    (saved,) = cache_files(directory)
    saved.write_bytes(saved.read_bytes()[:200])
    (saved.parent / "notes.txt").write_text("stray")
    events, status = fresh_engine_run(directory, a, turn, 8)
    assert status["disk_cache"]["removed_unusable"] == 2
    assert events[0].cached_tokens == 0 and [e.token for e in events] == expected
    assert not (saved.parent / "notes.txt").exists()
    # The good cache this request wrote replaced it.
    (written,) = cache_files(directory)
    assert written.name == f"{len(turn)}-{prefix_hash(turn)}.safetensors"

    # The model rebuilt in place (a new weights file): its old caches are stale, never matched.
    weights = a / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    events, _ = fresh_engine_run(directory, a, [*turn, 5], 8)
    assert events[0].cached_tokens == 0
    assert [e.token for e in events] == reference(a, [*turn, 5], 8)


def test_the_disk_cache_keeps_its_size_by_dropping_the_least_recently_used(
    tmp_path: Path, model_paths: tuple[Path, Path]
) -> None:
    directory = tmp_path / "prompts"
    path = model_paths[0]
    base = long_prompt(path)
    fresh_engine_run(directory, path, base, 1)
    (one,) = cache_files(directory)
    size = one.stat().st_size
    one.unlink()
    prompts = [encode(path, f"Topic {i}: ") + base for i in range(3)]
    for prompt in prompts:
        fresh_engine_run(directory, path, prompt, 1, max_bytes=int(size * 2.5))
    names = {f.name for f in cache_files(directory)}
    # The oldest went first; the two newest fit and stay.
    assert names == {f"{len(p)}-{prefix_hash(p)}.safetensors" for p in prompts[1:]}
