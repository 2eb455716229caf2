"""Every fault knob of the fake hub ends in a complete, verified model or in a clear error with
nothing bad in view (no unverified file in the snapshot, no *.incomplete left); a rerun after
the hub recovers always completes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from local_ai.errors import IntegrityError, LocalAIError, UnavailableError, UnsafeInputError
from local_ai.hub import client
from local_ai.hub.fetch import fetch
from local_ai.hub.resolve import repo_cache_dir, resolve
from local_ai.manifest.models import ModelSpec
from local_ai.manifest.source import ResolvedSource, SourceFile
from tests.harness.fakehub import FakeHub
from tests.hub_repos import MIB, MLX_REPO, add_mlx_repo, model_files, safetensors_bytes

SHARD = "model-00002-of-00003.safetensors"


class _NoSleep:
    """Stands in for `time` inside huggingface_hub: its retry backoff becomes instant."""

    def sleep(self, seconds: float) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    monkeypatch.setattr(client, "RETRY_DELAYS", (0.0, 0.0))
    monkeypatch.setattr(file_download, "time", _NoSleep())
    monkeypatch.setattr(_http, "time", _NoSleep())


@pytest.fixture
def repo(fake_hub: FakeHub) -> str:
    return add_mlx_repo(fake_hub, files=model_files(quantized=True, shards=3, size=200_000))


def _spec() -> ModelSpec:
    return ModelSpec(repo=MLX_REPO)


def assert_nothing_bad_in_view(hub: FakeHub, resolved: ResolvedSource) -> None:
    storage = repo_cache_dir(MLX_REPO)
    snapshot = storage / "snapshots" / str(resolved.commit)
    for path in snapshot.rglob("*"):
        if path.is_file():
            name = path.relative_to(snapshot).as_posix()
            expected = hub.entry(MLX_REPO, name, revision=str(resolved.commit)).blob.sha256
            assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, name
    assert list(storage.rglob("*.incomplete")) == []


def assert_complete(hub: FakeHub, resolved: ResolvedSource, snapshot: Path) -> None:
    assert {p.name for p in snapshot.iterdir()} == {f.name for f in resolved.files}
    assert_nothing_bad_in_view(hub, resolved)


# (fault kind, inject() arguments, error expected or None for a recovered fetch)
CASES: list[tuple[str, dict[str, Any], type[LocalAIError] | None]] = [
    ("truncate", {"path": SHARD, "times": 1}, None),
    ("truncate", {"path": SHARD}, UnavailableError),
    ("flip_byte", {"path": SHARD, "times": 1}, IntegrityError),
    ("drop_connection", {"path": SHARD, "times": 2}, None),
    ("drop_connection", {"path": SHARD}, UnavailableError),
    ("http_429", {"path": SHARD, "methods": ("GET",), "times": 2}, None),
    ("http_500", {"path": SHARD, "methods": ("GET",), "times": 2}, None),
    ("http_500", {"path": SHARD, "methods": ("HEAD",)}, UnavailableError),
    ("http_500", {"path": SHARD, "methods": ("GET",)}, UnavailableError),
    ("slow", {"path": SHARD, "bytes_per_second": 400_000, "max_seconds": 0.3}, None),
    ("wrong_size", {"path": SHARD, "where": ("head",)}, UnavailableError),
    ("wrong_sha256", {"path": SHARD, "where": ("head",)}, None),
]


@pytest.mark.parametrize(
    ("kind", "knobs", "error"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_download_faults(
    fake_hub: FakeHub,
    repo: str,
    kind: str,
    knobs: dict[str, Any],
    error: type[LocalAIError] | None,
) -> None:
    resolved = resolve("coder", _spec())
    fake_hub.inject(kind, **knobs)  # type: ignore[arg-type]

    if error is None:
        assert_complete(fake_hub, resolved, fetch(resolved).path)
    else:
        with pytest.raises(error) as raised:
            fetch(resolved)
        assert SHARD in str(raised.value) and MLX_REPO in str(raised.value)
        assert raised.value.hint
        assert_nothing_bad_in_view(fake_hub, resolved)
        # Finished files were kept: the rerun transfers the failed one only.
        fake_hub.clear_faults()
        fake_hub.clear_requests()
        assert_complete(fake_hub, resolved, fetch(resolved).path)
        assert {r.file for r in fake_hub.file_requests("GET")} == {SHARD}


@pytest.mark.parametrize("kind", ["wrong_size", "wrong_sha256"])
def test_listing_that_lies_about_a_file_is_caught_after_download(
    fake_hub: FakeHub, repo: str, kind: str
) -> None:
    fake_hub.inject(kind, path=SHARD, where=("api",))  # type: ignore[arg-type]
    lied = resolve("coder", _spec())

    with pytest.raises(IntegrityError, match=SHARD) as raised:
        fetch(lied)

    assert "deleted" in str(raised.value)
    assert_nothing_bad_in_view(fake_hub, lied)
    assert not (repo_cache_dir(MLX_REPO) / "snapshots" / str(lied.commit) / SHARD).exists()
    fake_hub.clear_faults()
    honest = resolve("coder", _spec())
    assert_complete(fake_hub, honest, fetch(honest).path)


def test_big_file_resumes_even_when_the_hub_ignores_range(fake_hub: FakeHub) -> None:
    big = safetensors_bytes(7, 11 * MIB)
    add_mlx_repo(fake_hub, files={**model_files(quantized=True), "model.safetensors": big})
    resolved = resolve("coder", _spec())
    fake_hub.inject("truncate", path="model.safetensors", at=len(big) - 1000, times=1)
    fake_hub.inject("ignore_range", times=1)

    result = fetch(resolved)

    assert (result.path / "model.safetensors").read_bytes() == big
    assert_nothing_bad_in_view(fake_hub, resolved)


def test_hostile_names_are_refused_from_the_hub_and_from_a_lock(
    fake_hub: FakeHub, repo: str
) -> None:
    for name in ("../evil", "/etc/passwd", "a/%2e%2e/b", "..\\x"):
        fake_hub.clear_faults()
        fake_hub.inject("hostile_names", names=(name,))
        with pytest.raises(UnsafeInputError):
            resolve("coder", _spec())
    fake_hub.clear_faults()
    good = resolve("coder", _spec())
    forged = ResolvedSource(
        alias="coder",
        kind="repo",
        format="mlx",
        files=(SourceFile(name="../../../outside", size=6, blob_id="0" * 40),),
        repo=MLX_REPO,
        commit=good.commit,
    )
    fake_hub.clear_requests()
    with pytest.raises(UnsafeInputError, match="outside"):
        fetch(forged)
    with pytest.raises(UnsafeInputError, match="commit sha"):
        fetch(
            ResolvedSource(
                alias="x", kind="repo", format="mlx", files=(), repo=MLX_REPO, commit="../../x"
            )
        )
    assert fake_hub.requests == []
    assert not list(Path(client.cache_dir()).parent.rglob("outside")) and not list(
        Path(client.cache_dir()).parent.rglob("evil")
    )


def test_corrupt_small_git_file_is_caught_by_its_git_blob_id(fake_hub: FakeHub, repo: str) -> None:
    # Small files have no sha256 in the listing: their git blob id (sha1) is what is checked.
    resolved = resolve("coder", _spec())
    assert next(f for f in resolved.files if f.name == "tokenizer.json").sha256 is None
    fake_hub.inject("flip_byte", path="tokenizer.json", at=3, times=1)

    with pytest.raises(IntegrityError, match=r"tokenizer\.json") as raised:
        fetch(resolved)

    assert "git blob id" in str(raised.value)
    assert_nothing_bad_in_view(fake_hub, resolved)
    fake_hub.clear_faults()
    assert_complete(fake_hub, resolved, fetch(resolved).path)
