"""apply's copy-to-host: a store entry reaches a [cluster] host over ssh, resumes after an
interruption, is verified by sha256 there and renamed into that host's store. Host "b" is this
machine with its own local-ai home, reached through a real sshd (tests/harness/sshd.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from local_ai.cluster import copy as cluster_copy
from local_ai.errors import IntegrityError, LocalAIError, UnavailableError
from local_ai.hub.progress import RecordingProgress
from local_ai.manifest.load import load_manifest
from local_ai.reconcile.adapters import Adapters
from local_ai.reconcile.model import Action, Kind, ReleaseParams
from local_ai.reconcile.render import render_text
from local_ai.reconcile.run import ApplyResult, RunOptions, apply_plan, make_plan
from local_ai.settings import Paths
from tests.harness.sshd import HOST_B, USER, install_ssh, path_with, sharded_tiny
from tests.harness.tinymodels import build_model

COPY = "copy-to-host:tiny@b"


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path, request: Any
) -> Path:
    # deepseek_v2: a tiny architecture mlx-lm 0.31 can split as a pipeline. float32 is
    # converted (a store entry here); float16 is served as is from its directory.
    dtype = getattr(request, "param", "float32")
    model = build_model(tmp_path / "tiny", "deepseek_v2", num_layers=4, dtype=dtype)
    manifest = tmp_path / "local-ai.toml"
    solo = f'[models.solo]\npath = "{model}"\n'
    manifest.write_text(sharded_tiny(model, tmp_path / "host-b", solo))
    bin_dir = tmp_path / "bin"
    install_ssh(bin_dir)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    return manifest


def _apply(manifest: Path, adapters: Adapters | None = None) -> ApplyResult:
    snapshot, plan = make_plan(load_manifest(manifest), RunOptions())
    assert not plan.errors, plan.errors
    return apply_plan(snapshot, plan, RunOptions(), adapters=adapters)


def _status(result: ApplyResult) -> dict[str, tuple[str, str]]:
    return {o.action.id: (o.status, o.message) for o in result.report.outcomes}


def _host_b(manifest: Path) -> Path:
    return manifest.parent / "host-b"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_files(manifest: Path) -> dict[str, Path]:
    """The files this machine serves for `tiny`."""
    from local_ai import settings
    from local_ai.store.state import load_state

    model = load_state(settings.paths().state_file).models["tiny"]
    return {rel: Path(model.location) / rel for rel in model.files}


def _far_entry(manifest: Path) -> Path | None:
    store = _host_b(manifest) / "store"
    entries = list(store.iterdir()) if store.is_dir() else []
    assert len(entries) <= 1, entries
    return entries[0] if entries else None


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, chunks: int) -> None:
    """Ctrl-C in the middle of sending: small chunks, KeyboardInterrupt after the N-th."""
    monkeypatch.setattr(cluster_copy, "CHUNK", 4096)
    hits = []

    def point(name: str) -> None:
        if name == "copy-to-host.chunk-sent":
            hits.append(name)
            if len(hits) == chunks:
                raise KeyboardInterrupt

    monkeypatch.setattr(cluster_copy, "failpoint", point)


def _partial(manifest: Path) -> Path:
    incoming = _host_b(manifest) / "incoming"
    dirs = [p for p in incoming.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("project", ["float32", "float16"], indirect=True)
def test_apply_copies_the_entry_writes_the_hostfile_and_a_second_apply_copies_nothing(
    project: Path, isolated_home: Path
) -> None:
    result = _apply(project)
    status = _status(result)
    assert status[COPY][0] == "done", status
    assert "verified by sha256 there" in status[COPY][1]
    assert status["install:solo"][0] == "done"  # single-Mac models are applied as usual
    entry = _far_entry(project)
    assert entry is not None and entry.name.split("-", 1)[1].startswith("tiny")
    files = _model_files(project)
    record = json.loads((entry / ".local-ai.json").read_text())
    assert record["kind"] == "copy"
    assert set(record["files"]) == set(files)
    for rel, path in files.items():
        assert _sha(entry / rel) == _sha(path) == record["files"][rel]["sha256"]
    assert not (_host_b(project) / "incoming" / entry.name).exists()  # renamed, not copied

    # The generation serves it by a group: rank 0 from here, rank 1 from b's copy.
    assert result.generation is not None
    group = result.generation.alias_map().models["tiny"].group
    assert group is not None and group.hosts == ["a", "b"] and group.parallel == "pipeline"
    assert group.model_paths[1] == str(entry)
    assert group.ssh[0] is None and group.ssh[1] is not None and group.ssh[1][-1] == HOST_B
    hostfile = json.loads((isolated_home / "run" / "cluster" / "tiny.hostfile.json").read_text())
    assert [h["ssh"] for h in hostfile["hosts"]] == ["127.0.0.1", HOST_B]

    # The host reports the entry now: nothing left to copy.
    _, again = make_plan(load_manifest(project), RunOptions())
    assert not [a for a in again.actions if a.kind is Kind.COPY_TO_HOST]
    assert not again.has_changes, [a.id for a in again.actions]


def test_an_interrupted_copy_is_continued_not_restarted(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after(monkeypatch, 10)
    first = _apply(project)
    assert first.report.interrupted
    assert _status(first)[COPY] == ("failed", "interrupted")
    assert _far_entry(project) is None  # nothing half-done in the host's store
    partial = _partial(project)
    arrived = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in _model_files(project).values())
    assert 0 < arrived < total

    monkeypatch.setattr(cluster_copy, "failpoint", lambda name: None)
    snapshot, plan = make_plan(load_manifest(project), RunOptions())
    seen = RecordingProgress()
    second = apply_plan(
        snapshot, plan, RunOptions(), adapters=Adapters(snapshot, fetch_progress=lambda: seen)
    )
    status, message = _status(second)[COPY]
    assert status == "done", message
    assert message.startswith(f"{total - arrived} B sent to b"), message
    assert f"({arrived} B were there from an interrupted copy)" in message
    assert seen.label == "to b" and seen.ended
    assert sum(seen.planned.values()) == sum(seen.received.values()) == total - arrived
    assert seen.done == sorted(seen.planned)
    entry = _far_entry(project)
    assert entry is not None
    for rel, path in _model_files(project).items():
        assert _sha(entry / rel) == _sha(path)


def test_a_corrupted_file_on_the_host_is_refused_and_sent_again_next_time(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _interrupt_after(monkeypatch, 10)
    _apply(project)
    partial = _partial(project)
    damaged = max((p for p in partial.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF  # same length: only the hash can tell
    damaged.write_bytes(bytes(data))

    monkeypatch.setattr(cluster_copy, "failpoint", lambda name: None)
    refused = _apply(project)
    outcome = next(o for o in refused.report.outcomes if o.action.id == COPY)
    assert outcome.status == "failed"
    assert isinstance(outcome.error, IntegrityError)
    assert "b refused the copy of store entry" in outcome.message
    assert damaged.name in outcome.message
    assert _far_entry(project) is None
    assert not damaged.exists()  # deleted there, so the next copy sends it whole
    assert refused.generation is None

    third = _apply(project)
    assert _status(third)[COPY][0] == "done"
    entry = _far_entry(project)
    assert entry is not None
    rel = str(damaged.relative_to(partial))
    assert _sha(entry / rel) == _sha(_model_files(project)[rel])


def test_a_failing_copy_skips_nothing_else_and_a_rerun_converges(project: Path) -> None:
    snapshot, plan = make_plan(load_manifest(project), RunOptions())
    adapters = Adapters(snapshot)
    handlers = adapters.handlers()

    def broken(action):  # type: ignore[no-untyped-def]
        raise LocalAIError("injected failure in copy-to-host", hint="this is a test")

    adapters.handlers = lambda: {**handlers, Kind.COPY_TO_HOST: broken}  # type: ignore[method-assign]
    result = apply_plan(snapshot, plan, RunOptions(), adapters=adapters)
    status = _status(result)
    assert status[COPY][0] == "failed"
    assert not [a for a, (s, _) in status.items() if s == "skipped"]
    assert status["install:tiny"][0] == status["install:solo"][0] == "done"
    assert result.generation is None

    again = _apply(project)
    assert set(_status(again)) == {COPY}
    assert again.report.ok and again.generation is not None
    assert again.generation.alias_map().models["tiny"].group is not None


def test_an_unreachable_host_is_an_ssh_error_with_a_hint(project: Path, tmp_path: Path) -> None:
    from local_ai.manifest.models import ClusterHost

    entry = cluster_copy.LocalEntry("0123456789abcdef", "tiny", (), {})
    host = ClusterHost(ssh="b.unreachable", address="127.0.0.1", home=str(tmp_path / "x"))
    with pytest.raises(UnavailableError, match="ssh failed: ssh: connect to host") as info:
        cluster_copy.copy_entry("b", host, entry)
    assert info.value.hint is not None and "ssh b.unreachable true" in info.value.hint

    # A host removed from [cluster.hosts]: no later apply reaches it, so its owner must.
    snapshot, _ = make_plan(load_manifest(project), RunOptions())
    snapshot.observed = replace(snapshot.observed, removed_hosts={"gone": host})
    params = ReleaseParams("gone", "0123456789abcdef-tiny", "a", "tiny")
    action = Action(
        "release-hold:tiny@gone", Kind.RELEASE_HOLD, "hold.tiny@gone", "", params=params
    )
    with pytest.raises(
        UnavailableError, match="cannot release the hold on gone: ssh failed"
    ) as info:
        Adapters(snapshot).release_hold(action)
    assert info.value.hint == (
        "gone is no longer in [cluster.hosts]: "
        "run `local-ai gc --release-holds` on it (ssh b.unreachable)"
    )


def _one_file_entry(tmp_path: Path) -> cluster_copy.LocalEntry:
    data = tmp_path / "w.bin"
    data.write_bytes(b"weights" * 1000)
    file = cluster_copy.EntryFile("w.bin", data.stat().st_size, _sha(data), data)
    return cluster_copy.LocalEntry("0123456789abcdef", "w", (file,), {"kind": "copy"})


def test_a_second_copy_of_the_same_entry_to_a_host_waits_its_turn(
    project: Path, tmp_path: Path
) -> None:
    import fcntl

    from local_ai.manifest.models import ClusterHost

    home = tmp_path / "host-c"
    host = ClusterHost(
        ssh=f"{USER}@c.local", address="127.0.0.1", python=sys.executable, home=str(home)
    )
    entry = _one_file_entry(tmp_path)
    (home / "incoming").mkdir(parents=True)
    with (home / "incoming" / "0123456789abcdef-w.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another apply's copy in progress
        with pytest.raises(cluster_copy.CopyError, match="another apply is copying it"):
            cluster_copy.copy_entry("c", host, entry)
    assert cluster_copy.copy_entry("c", host, entry).sent == entry.size
    assert cluster_copy.copy_entry("c", host, entry).present


def test_the_receiver_refuses_a_file_name_outside_the_entry(
    isolated_home: Path, tmp_path: Path
) -> None:
    import io

    listing = {"files": [{"name": "../escape", "size": 1, "sha256": "0" * 64}], "provenance": {}}
    stdin = io.BytesIO(json.dumps(listing).encode() + b"\n")
    with pytest.raises(ValueError, match="outside the entry"):
        cluster_copy.receive("0123456789abcdef", "w", stdin, io.StringIO())
    assert not (isolated_home / "incoming" / "escape").exists()
    assert not (isolated_home / "store").exists()


def test_a_release_names_one_store_entry_never_a_path(isolated_home: Path) -> None:
    import io

    from local_ai.store.holds import list_holds, write_hold

    paths = Paths(isolated_home)
    write_hold(paths, "0123456789abcdef-w", "a", "tiny", how="copied here")
    for bad in ("..", "../cluster", "0123456789abcdef-../x", "nodigest-w"):
        out = io.StringIO()
        assert cluster_copy.release(bad, "a", "tiny", out) == 2
        assert "bad entry name" in out.getvalue()
    out = io.StringIO()
    assert cluster_copy.release("0123456789abcdef-w", "a", "tiny", out) == 0
    assert json.loads(out.getvalue()) == {"ok": True, "released": True}
    assert not list_holds(paths) and not (paths.holds / "0123456789abcdef-w").exists()


def test_an_apply_targeting_another_model_keeps_the_sharded_group(project: Path) -> None:
    first = _apply(project)
    assert first.generation is not None
    group = first.generation.alias_map().models["tiny"].group
    assert group is not None
    snapshot, _ = make_plan(load_manifest(project), RunOptions(targets=("solo",)))
    assert not snapshot.observed.hosts  # its hosts were not observed this time
    assert Adapters(snapshot).build_alias_map().models["tiny"].group == group


def _gc_on(home: Path, *args: str) -> str:
    """`local-ai gc ARGS` run as a host with that local-ai home."""
    env = {**os.environ, "LOCAL_AI_HOME": str(home), "COLUMNS": "1000"}
    done = subprocess.run(
        [sys.executable, "-m", "local_ai", "gc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("project", ["float16"], indirect=True)
def test_host_b_gc_keeps_what_the_cluster_serves_until_rank_0_releases_it_even_once_removed(
    project: Path,
) -> None:
    from local_ai.store.holds import incoming_lock

    assert _status(_apply(project))[COPY][0] == "done"
    entry = _far_entry(project)
    assert entry is not None
    hold_file = _host_b(project) / "cluster" / "holds" / entry.name / "a--tiny.json"
    hold = json.loads(hold_file.read_text())
    assert (hold["entry"], hold["rank0"], hold["alias"], hold["how"]) == (
        entry.name, "a", "tiny", "copied here"
    )  # fmt: skip

    # Two copies cut short: one long ago, one that an apply is continuing right now.
    stale = _host_b(project) / "incoming" / "0123456789abcdef-old"
    busy = _host_b(project) / "incoming" / "fedcba9876543210-busy"
    for partial in (stale, busy):
        (partial / "sub").mkdir(parents=True)
        (partial / "sub" / "part.safetensors").write_bytes(b"x" * 1000)
    with incoming_lock(Paths(_host_b(project)), busy.name) as lock:
        assert lock is not None
        dry = _gc_on(_host_b(project))
        done = json.loads(_gc_on(_host_b(project), "--yes", "--json"))
    why = "held for cluster alias tiny of host a (last confirmed"
    assert f"keeps store entry {entry}: {why}" in dry
    assert f"would delete unfinished copy from a cluster's rank 0: {stale} (1000 B)" in dry
    assert str(busy) not in dry
    assert [k["path"] for k in done["kept_for_cluster"]] == [str(entry)]
    assert done["kept_for_cluster"][0]["why"][0].startswith("held for cluster alias tiny of host a")
    assert done["store_entries"] == []
    assert done["incomplete_copies"] == [{"path": str(stale), "bytes": 1000}]
    assert entry.is_dir() and not stale.exists() and busy.is_dir()

    # b leaves [cluster.hosts] for c (another home behind the same ssh): the apply copies to c
    # and releases b's hold over the ssh the served generation recorded; b's gc then frees it.
    host_c = project.parent / "host-c"
    text = project.read_text().replace("[cluster.hosts.b]", "[cluster.hosts.c]")
    text = text.replace(f'home = "{_host_b(project)}"', f'home = "{host_c}"')
    project.write_text(text.replace('hosts = ["a", "b"]', 'hosts = ["a", "c"]'))
    snapshot, plan = make_plan(load_manifest(project), RunOptions())
    release = f"release-hold:tiny@b:{entry.name.split('-')[0]}"
    assert plan.action(release).cause == "b is no longer in [cluster.hosts]", render_text(plan)
    result = apply_plan(snapshot, plan, RunOptions())
    said = f"released a's hold of store entry {entry.name} for tiny on b"
    assert _status(result)[release] == ("done", said)
    assert _status(result)["copy-to-host:tiny@c"][0] == "done"
    assert not hold_file.exists()
    freed = json.loads(_gc_on(_host_b(project), "--yes", "--json"))
    assert [e["path"] for e in freed["store_entries"]] == [str(entry)]
    _, again = make_plan(load_manifest(project), RunOptions())  # b is no longer recorded
    assert not again.has_changes and not again.warnings, render_text(again)
    (entry,) = (host_c / "store").iterdir()
    hold_file = host_c / "cluster" / "holds" / entry.name / "a--tiny.json"

    # tiny leaves the manifest: rank 0's apply releases c's hold, then c's gc frees the entry.
    project.write_text(re.sub(r"\[models\.tiny\]\n(?:[^\[\n].*\n)*", "", project.read_text()))
    snapshot, plan = make_plan(load_manifest(project), RunOptions())
    release = f"release-hold:tiny@c:{entry.name.split('-')[0]}"
    assert plan.action(release).cause == "tiny is no longer in the manifest"
    assert "- hold.tiny@c  (tiny is no longer in the manifest)" in render_text(plan)
    result = apply_plan(snapshot, plan, RunOptions())
    said = f"released a's hold of store entry {entry.name} for tiny on c"
    assert _status(result)[release] == ("done", said)
    assert not hold_file.exists()
    freed = json.loads(_gc_on(host_c, "--yes", "--json"))
    assert [e["path"] for e in freed["store_entries"]] == [str(entry)]
    assert freed["kept_for_cluster"] == [] and not entry.exists()
    _, again = make_plan(load_manifest(project), RunOptions())
    assert not again.has_changes, [a.id for a in again.actions]
