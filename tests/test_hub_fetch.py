"""Fetching through the real huggingface_hub client: exactly the resolved files, each verified,
the user's HF cache reused, nothing transferred twice, a clear refusal when disk or network is
missing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from local_ai.cli.progress import RichProgress
from local_ai.errors import DiskSpaceError, IntegrityError, OfflineError
from local_ai.hub import client
from local_ai.hub import fetch as fetch_module
from local_ai.hub.fetch import fetch, incomplete_leftovers, is_cached, missing_from_cache
from local_ai.hub.progress import RecordingProgress
from local_ai.hub.resolve import resolve
from local_ai.manifest.models import ModelSpec
from local_ai.manifest.source import ResolvedSource
from tests.harness.fakehub import FakeHub
from tests.hub_repos import FETCHED, MLX_REPO, add_mlx_repo, model_files


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "RETRY_DELAYS", (0.0, 0.0))


@pytest.fixture
def mlx(fake_hub: FakeHub) -> ResolvedSource:
    add_mlx_repo(fake_hub, files=model_files(quantized=True, shards=3, size=300_000))
    return resolve("coder", ModelSpec(repo=MLX_REPO))


def _names_requested(hub: FakeHub) -> set[str]:
    return {r.file for r in hub.file_requests() if r.file}


def test_fetch_transfers_exactly_the_resolved_files_and_verifies_them(
    fake_hub: FakeHub, mlx: ResolvedSource
) -> None:
    result = fetch(mlx)

    expected = {f.name for f in mlx.files}
    assert expected == (FETCHED - {"model.safetensors"}) | {
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    }
    on_disk = {p.relative_to(result.path).as_posix() for p in result.path.rglob("*") if p.is_file()}
    assert on_disk == expected
    assert _names_requested(fake_hub) <= expected  # never .py, .bin, README, original/
    for item in result.files:
        blob = fake_hub.entry(MLX_REPO, item.name).blob
        assert (
            item.sha256
            == blob.sha256
            == hashlib.sha256((result.path / item.name).read_bytes()).hexdigest()
        )
    assert result.downloaded_bytes == mlx.total_size - next(
        f.size for f in mlx.files if f.name == "config.json"
    )  # config.json came with resolution (format detection) and is reused


def test_second_fetch_transfers_zero_bytes(fake_hub: FakeHub, mlx: ResolvedSource) -> None:
    fetch(mlx)
    fake_hub.clear_requests()

    again = fetch(mlx)

    assert fake_hub.file_bytes_sent() == 0
    assert fake_hub.requests == []  # pinned to a commit: the cache answers everything
    assert again.downloaded_bytes == 0 and again.reused_bytes == mlx.total_size


def test_a_model_fetched_earlier_by_huggingface_hub_is_reused(fake_hub: FakeHub) -> None:
    from huggingface_hub import snapshot_download

    add_mlx_repo(fake_hub)
    earlier = Path(snapshot_download(MLX_REPO, endpoint=fake_hub.url, cache_dir=client.cache_dir()))
    fake_hub.clear_requests()

    resolved = resolve("coder", ModelSpec(repo=MLX_REPO))
    result = fetch(resolved)

    assert result.path == earlier
    assert fake_hub.file_bytes_sent() == 0
    assert result.downloaded_bytes == 0 and result.reused_bytes == resolved.total_size


def test_new_commit_fetches_only_what_changed(fake_hub: FakeHub, mlx: ResolvedSource) -> None:
    fetch(mlx)
    fake_hub.commit(MLX_REPO, {"tokenizer_config.json": '{"eos_token": "</s>"}'})
    fake_hub.clear_requests()

    newer = fetch(resolve("coder", ModelSpec(repo=MLX_REPO)))

    transferred = {f.name for f in newer.files if f.transferred}
    assert transferred == {"tokenizer_config.json"}
    assert fake_hub.file_bytes_sent() == len('{"eos_token": "</s>"}')


def test_progress_reports_every_byte_per_file(fake_hub: FakeHub, mlx: ResolvedSource) -> None:
    progress = RecordingProgress()

    result = fetch(mlx, progress=progress)

    transferred = {f.name: f.size for f in result.files if f.transferred}
    assert progress.planned == transferred
    assert progress.received == transferred
    assert set(progress.done) == {f.name for f in mlx.files} and progress.ended
    quiet = RecordingProgress()
    fetch(mlx, progress=quiet)
    assert quiet.planned == {} and quiet.received == {}


def test_preflight_names_directory_and_missing_bytes(
    fake_hub: FakeHub, mlx: ResolvedSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch_module, "free_bytes", lambda path: 1000)

    with pytest.raises(DiskSpaceError) as error:
        fetch(mlx)

    message = str(error.value)
    assert str(client.cache_dir()) in message and "missing" in message
    assert "HF_HUB_CACHE" in str(error.value.hint)
    assert fake_hub.file_bytes_sent() == next(
        f.size for f in mlx.files if f.name == "config.json"
    )  # only resolution's config.json: nothing started


def test_offline_fetch_names_missing_files_then_works_from_the_cache(
    fake_hub: FakeHub, mlx: ResolvedSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as error:
        fetch(mlx)
    assert "model-00001-of-00003.safetensors" in str(error.value)
    listed = str(error.value).rsplit(": ", 1)[-1].split(", ")
    assert "config.json" not in listed  # that one is cached already
    assert "6 file(s)" in str(error.value)
    assert "plan --offline" in str(error.value.hint)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetch(mlx)
    fake_hub.clear_requests()
    assert fetch(mlx, offline=True).reused_bytes == mlx.total_size
    assert fake_hub.requests == []


def test_corrupt_file_already_in_the_cache_is_deleted_and_reported(
    fake_hub: FakeHub, mlx: ResolvedSource
) -> None:
    result = fetch(mlx)
    victim = result.path / "model-00002-of-00003.safetensors"
    blob = victim.resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as error:
        fetch(mlx)

    assert "model-00002-of-00003.safetensors" in str(error.value)
    assert MLX_REPO in str(error.value)
    assert not victim.exists() and not blob.exists()  # bad blob and its link are gone
    assert fetch(mlx).files  # the next run downloads it afresh


def test_leftover_incomplete_files_are_cleaned_when_no_download_owns_them(
    fake_hub: FakeHub, mlx: ResolvedSource
) -> None:
    from filelock import FileLock

    fetch(mlx)
    storage = client.cache_dir() / "models--mlx-community--Tiny-4bit"
    stale = storage / "blobs" / ("a" * 64 + ".0badc0de.incomplete")
    busy = storage / "blobs" / ("b" * 64 + ".12345678.incomplete")
    stale.write_bytes(b"x" * 10)
    busy.write_bytes(b"y" * 10)
    lock_dir = storage.parent / ".locks" / storage.name
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = FileLock(str(lock_dir / ("b" * 64 + ".lock")))

    with held:  # as a download in another process would hold it
        assert incomplete_leftovers() == [stale]
        result = fetch(mlx)
        assert result.cleaned == (stale,)
        assert not stale.exists() and busy.exists()


def test_missing_from_cache_answers_without_the_network(
    fake_hub: FakeHub, mlx: ResolvedSource
) -> None:
    fake_hub.clear_requests()
    before = {f.name for f in missing_from_cache(mlx)}
    assert before == {f.name for f in mlx.files} - {"config.json"}  # resolution fetched that one
    assert not is_cached(mlx)

    result = fetch(mlx)
    fake_hub.clear_requests()
    assert missing_from_cache(mlx) == () and is_cached(mlx)
    shard = result.path / "model-00001-of-00003.safetensors"
    blob = shard.resolve()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1])  # a truncated file is not there
    (result.path / "tokenizer.json").unlink()
    assert {f.name for f in missing_from_cache(mlx)} == {shard.name, "tokenizer.json"}
    assert fake_hub.requests == []


def test_rich_progress_shows_total_bytes_speed_and_files(
    fake_hub: FakeHub, mlx: ResolvedSource
) -> None:
    import io

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)

    fetch(mlx, progress=RichProgress(console))

    text = out.getvalue()
    assert f"{MLX_REPO} (6 files)" in text  # config.json came with resolution
    assert "MB" in text and "/s" in text  # bytes and speed columns
    quiet = io.StringIO()
    fetch(mlx, progress=RichProgress(Console(file=quiet, force_terminal=True)))
    assert quiet.getvalue() == ""  # nothing to transfer: no bars at all
