"""`models list | verify | rm` and `gc`: what is installed, intact bytes, safe removal."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import os
from pathlib import Path

import pytest

from local_ai import settings
from local_ai.errors import ExitCode
from local_ai.hub import client
from local_ai.hub.fetch import fetch
from local_ai.hub.resolve import resolve
from local_ai.manifest.models import ModelSpec
from local_ai.reconcile.adapters import installed_record
from local_ai.store.layout import Store
from local_ai.store.lockfile import LockFile, entry_from_resolved, save_lock
from local_ai.store.locks import apply_lock
from local_ai.store.state import FileRecord, InstalledModel, State, load_state, save_state
from local_ai.util.atomic import atomic_write_text
from tests.harness.fakehub import FakeHub
from tests.hub_repos import MLX_REPO, add_mlx_repo, run_inprocess
from tests.projects import MLX, Project


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "RETRY_DELAYS", (0.0, 0.0))


def _converted(alias: str, digest: str, payload: bytes = b"w" * 1000) -> InstalledModel:
    store = Store(settings.paths())
    with store.build(digest, f"org/{alias}", {"source": f"org/{alias}"}) as staging:
        (staging / "model.safetensors").write_bytes(payload)
    entry = store.get(digest, f"org/{alias}")
    assert entry is not None
    import hashlib

    return InstalledModel(
        alias=alias,
        source=f"org/{alias}",
        format="mlx",
        location=str(entry.path),
        location_kind="store",
        quantization="4bit",
        store_digest=digest,
        files={
            "model.safetensors": FileRecord(
                size=len(payload), sha256=hashlib.sha256(payload).hexdigest()
            )
        },
        size_bytes=len(payload),
    )


@pytest.fixture
def installed(fake_hub: FakeHub, tmp_path: Path) -> dict[str, InstalledModel]:
    """`coder` served from the HF cache (locked in the manifest's lock), `small` and `old`
    converted into the store; `coder` is in the server's alias map."""
    add_mlx_repo(fake_hub)
    spec = ModelSpec(repo=MLX_REPO)
    resolved = resolve("coder", spec)
    result = fetch(resolved)
    manifest = tmp_path / "work" / "local-ai.toml"
    manifest.write_text(f'[models.coder]\nrepo = "{MLX_REPO}"\n')
    save_lock(
        manifest.with_name("local-ai.lock"),
        LockFile(models={"coder": entry_from_resolved(resolved, spec, sha256s=result.sha256s())}),
    )
    models = {
        "coder": installed_record(resolved, spec, fetched=result),
        "small": _converted("small", "1111111111111111"),
        "old": _converted("old", "2222222222222222", b"o" * 500),
    }
    paths = settings.paths()
    save_state(paths.state_file, State(models=models))
    aliases = {"version": 1, "models": {"coder": {"path": models["coder"].location}}}
    atomic_write_text(paths.aliases_file, json.dumps(aliases))
    return models


def test_models_list_shows_what_is_installed_and_served(
    installed: dict[str, InstalledModel],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, err = run_inprocess(capsys, "models", "list", "--json")
    assert code == 0, err
    rows = {row["alias"]: row for row in json.loads(out)["models"]}
    assert rows["coder"]["where"] == "hf-cache" and rows["coder"]["server"] == "in map"
    assert rows["coder"]["quantization"] == "4bit" and rows["coder"]["format"] == "mlx"
    assert rows["coder"]["bytes"] == installed["coder"].size_bytes  # blobs behind the links
    assert rows["small"]["where"] == "store" and rows["small"]["server"] is None
    small_dir = Path(installed["small"].location)
    on_disk = sum(f.stat().st_size for f in small_dir.rglob("*") if f.is_file())
    assert rows["small"]["bytes"] == on_disk and on_disk >= 1000  # weights + provenance

    monkeypatch.setenv("COLUMNS", "160")  # rich folds long cells at capture's 80 columns
    code, out, _ = run_inprocess(capsys, "models", "list")
    assert code == 0
    assert "coder" in out and MLX_REPO in out and "in map" in out and "hf-cache" in out


def test_models_verify_rehashes_against_the_lock(
    installed: dict[str, InstalledModel], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_inprocess(capsys, "models", "verify", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["models"]["coder"]["against"] == "local-ai.lock"
    assert report["models"]["coder"]["checked"] == 5
    assert report["models"]["small"]["against"] == "recorded hashes"

    blob = (Path(installed["coder"].location) / "model.safetensors").resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))  # same size and mtime-independent: only a hash can tell

    code, out, err = run_inprocess(capsys, "models", "verify", "coder")
    assert code == ExitCode.ERROR
    assert "model.safetensors: sha256 is" in out
    assert "1 model(s) failed verification: coder" in err and "models rm coder" in err
    code, _, err = run_inprocess(capsys, "models", "verify", "nope")
    assert code == ExitCode.ERROR and "not installed: nope" in err


def test_models_rm_guards_served_models_and_frees_unused_entries(
    installed: dict[str, InstalledModel], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = settings.paths()
    code, _, err = run_inprocess(capsys, "models", "rm", "coder", "--yes")
    assert code == ExitCode.ERROR and "alias map" in err and "--force" in err
    assert "coder" in load_state(paths.state_file).models

    code, _, err = run_inprocess(capsys, "models", "rm", "small")  # not a TTY, no --yes
    assert code == ExitCode.ERROR and "--yes" in err

    # A kept generation still serves `small`: the state entry goes, the store entry stays.
    generation = {"aliases": {"small": {"path": installed["small"].location}}}
    atomic_write_text(paths.generations / "000001.json", json.dumps(generation))
    code, out, err = run_inprocess(capsys, "models", "rm", "small", "--yes")
    assert code == 0, err
    assert "store entry kept: still used by generation 000001" in out
    assert Path(installed["small"].location).is_dir()

    code, out, err = run_inprocess(capsys, "models", "rm", "old", "--yes", "--json")
    assert code == 0, err
    assert not Path(installed["old"].location).exists()
    state = load_state(paths.state_file)
    assert set(state.models) == {"coder"} and state.serial == 3

    code, out, err = run_inprocess(capsys, "models", "rm", "coder", "--yes", "--force")
    assert code == 0, err
    assert "HuggingFace cache copy stays" in out and "still declared in local-ai.toml" in out
    assert Path(installed["coder"].location).is_dir()


def test_gc_is_a_dry_run_until_yes(
    installed: dict[str, InstalledModel], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = settings.paths()
    store = Store(paths)
    with store.build("3333333333333333", "org/orphan", {}) as staging:
        (staging / "w.safetensors").write_bytes(b"x" * 4096)
    orphan = store.get("3333333333333333", "org/orphan")
    assert orphan is not None
    killed = paths.staging / "4444-org--m.999999999.1"  # a build whose process is gone
    killed.mkdir(parents=True)
    (killed / "part").write_bytes(b"p" * 100)
    blobs = client.cache_dir() / "models--mlx-community--Tiny-4bit" / "blobs"
    unfinished = blobs / ("c" * 64 + ".deadbeef.incomplete")
    unfinished.write_bytes(b"i" * 10)
    # `old` leaves the state but a generation keeps it.
    state = load_state(paths.state_file)
    save_state(
        paths.state_file,
        state.model_copy(update={"models": {k: v for k, v in state.models.items() if k != "old"}}),
    )
    atomic_write_text(
        paths.generations / "000002.json",
        json.dumps({"aliases": {"old": {"path": installed["old"].location}}}),
    )

    code, out, err = run_inprocess(capsys, "gc", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert [e["path"] for e in plan["store_entries"]] == [str(orphan.path)]
    assert [e["path"] for e in plan["staging"]] == [str(killed)]
    assert [e["path"] for e in plan["incomplete_downloads"]] == [str(unfinished)]
    assert (
        plan["bytes"]
        == 4096 + len(json.dumps({})) * 0 + plan["store_entries"][0]["bytes"] - 4096 + 100 + 10
    )
    assert orphan.path.exists() and killed.exists() and unfinished.exists()

    code, out, err = run_inprocess(capsys, "gc", "--yes")
    assert code == 0, err
    assert "freed" in out
    assert not orphan.path.exists() and not killed.exists() and not unfinished.exists()
    for alias in ("coder", "small", "old"):
        assert Path(installed[alias].location).is_dir(), alias
    code, out, _ = run_inprocess(capsys, "gc")
    assert "nothing to collect" in out


def _hold(
    lock_path: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    with apply_lock(Path(lock_path), command="local-ai apply (holder)"):
        ready.set()
        stop.wait(30)


def test_writers_refuse_while_another_holds_the_apply_lock(
    installed: dict[str, InstalledModel], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = settings.paths()
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(paths.apply_lock), ready, stop))
    holder.start()
    try:
        assert ready.wait(30)
        before = paths.state_file.read_bytes()
        code, _, err = run_inprocess(capsys, "models", "rm", "small", "--yes")
        assert code == ExitCode.ERROR
        assert f"pid {holder.pid} (local-ai apply (holder))" in err and "--lock-timeout" in err
        assert paths.state_file.read_bytes() == before
    finally:
        stop.set()
        holder.join(30)
    assert os.environ.get("LOCAL_AI_HOME")
    code, _, err = run_inprocess(capsys, "models", "rm", "small", "--yes", "--lock-timeout", "5")
    assert code == 0, err


def test_two_applies_at_once_one_is_refused_and_nothing_is_corrupted(
    tiny_hub: FakeHub, project: Project
) -> None:
    project.write(f'[models.chat]\nrepo = "{MLX}"\ncontext = 4096\n', server="autostart = false")
    # The weights trickle so the two runs surely overlap (bounded to 30 s).
    tiny_hub.inject("slow", repo_id=MLX, bytes_per_second=128 * 1024, max_seconds=30)
    procs = [project.popen("apply", "--yes") for _ in range(2)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    codes = [proc.returncode for proc in procs]

    assert sorted(codes) == [0, ExitCode.ERROR], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    assert f"pid {procs[winner].pid} (local-ai apply --yes)" in outputs[loser], outputs[loser]
    assert "--lock-timeout" in outputs[loser]
    state = load_state(settings.paths().state_file)
    assert set(state.models) == {"chat"} and state.serial > 0
    assert list(project.home.glob("staging/*")) == []
    tiny_hub.clear_faults()
    assert project.cli("plan", "--detailed-exitcode").returncode == 0  # converged, intact
    assert project.cli("models", "verify").returncode == 0


def test_gc_release_holds_frees_what_a_vanished_rank_0_held(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster host whose rank 0 is gone for good: its holds are dropped by hand."""
    from local_ai.store.holds import list_holds, write_hold

    monkeypatch.setenv("COLUMNS", "1000")  # one line per path
    paths = settings.paths()
    store = Store(paths)
    with store.build("5555555555555555", "org/far", {}) as staging:
        (staging / "w.safetensors").write_bytes(b"x" * 4096)
    far = store.get("5555555555555555", "org/far")
    assert far is not None
    write_hold(paths, far.path.name, "studio", "kimi", how="copied here")

    code, out, err = run_inprocess(capsys, "gc", "--yes")  # the hold keeps it
    assert code == 0, err
    assert f"keeps store entry {far.path}: held for cluster alias kimi of host studio" in out
    assert far.path.is_dir()

    code, out, err = run_inprocess(capsys, "gc", "--release-holds", "--json")
    assert code == 0, err
    dry = json.loads(out)
    assert [(h["entry"], h["rank0"], h["alias"]) for h in dry["released_holds"]] == [
        (far.path.name, "studio", "kimi")
    ]
    assert [e["path"] for e in dry["store_entries"]] == [str(far.path)]
    assert far.path.is_dir() and list_holds(paths)  # a dry run

    code, out, err = run_inprocess(capsys, "gc", "--release-holds", "--yes")
    assert code == 0, err
    assert "released the hold of store entry" in out and "freed" in out
    assert not far.path.exists() and not list_holds(paths)
