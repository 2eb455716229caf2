"""Disk full during `apply`: the state home and the HuggingFace cache on a small tmpfs, a previous
generation served by the real daemon, then a manifest change whose download (and, separately,
whose conversion) does not fit. The apply must fail with a message naming the disk and what to
do, leave nothing half-written, keep serving the previous generation, and converge once space
is back.

Needs root for `mount -t tmpfs` (CI and this machine run as root); skipped with the reason
otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_ai.errors import ExitCode
from local_ai.reconcile.generations import Generations
from tests.harness.fakehub import FakeHub
from tests.hub_repos import run_inprocess
from tests.projects import HF, MLX, Project
from tests.server_helpers import build_chat_model, wait_for

BIG = "mlx-community/tiny-chat-wide"
MIB = 1024 * 1024


class SmallDisk:
    """A tmpfs of `size` bytes mounted at `root`, with a filler file to take its free space."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self.filler = root / "filler"

    def mount(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.root)],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def unmount(self) -> None:
        done = subprocess.run(["umount", str(self.root)], capture_output=True, timeout=30)
        if done.returncode != 0:  # a process still holds a file there: detach it anyway
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=30)

    @property
    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def fill(self, leave: int) -> None:
        """Grow the filler until `leave` bytes (or less) are free."""
        # tmpfs undoes a whole fallocate that meets ENOSPC, and a download may take space between
        # reading `free` and allocating: retry with smaller steps until nothing more fits.
        with self.filler.open("ab") as f:
            size = f.seek(0, os.SEEK_END)
            step = max(0, self.free - leave)
            while step >= 4096:
                try:
                    os.posix_fallocate(f.fileno(), size, step)
                except OSError:
                    step //= 2
                    continue
                size += step
                step = max(0, self.free - leave)

    def free_up(self) -> None:
        self.filler.unlink(missing_ok=True)


def _mount_or_skip(disk: SmallDisk) -> None:
    try:
        disk.mount()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc} {detail.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", 16 * MIB)
    _mount_or_skip(disk)
    try:
        yield disk
    finally:
        disk.unmount()


def _on_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, disk: SmallDisk, *, hf_cache: Path
) -> Project:
    home = disk.root / "home"
    home.mkdir()
    hf_cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("LOCAL_AI_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache / "hub"))
    project = Project(tmp_path / "work", home)
    # Most runs use the real CLI in this process (no 2 s of imports each).
    monkeypatch.setenv("LOCAL_AI_CONFIG", str(project.manifest))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return project


@pytest.fixture
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ~2.6 MB of weights: room for it on the disk, but not once the disk is nearly full.
    return build_chat_model(tmp_path_factory.mktemp("wide") / "wide", hidden_size=128)


CHAT = f'[models.chat]\nrepo = "{MLX}"\ncontext = 4096\n'


def _served_before(project: Project, capsys: Any) -> dict[str, object]:
    code, out, err = run_inprocess(capsys, "apply", "--yes")
    assert code == 0, out + err
    assert project.chat("chat").status_code == 200
    return project.state()


def _unchanged(project: Project, before: dict[str, object], pending: str, capsys: Any) -> None:
    """The failed apply left the previous generation in force and nothing half-written."""
    state = project.state()
    assert state["models"] == before["models"]
    generations = Generations(project.home / "generations")
    assert generations.current_number() == 1 and len(generations.all()) == 1
    staging = project.home / "staging"
    assert not staging.is_dir() or not list(staging.iterdir()), list(staging.iterdir())
    for entry in (project.home / "store").glob("*"):
        assert (entry / ".local-ai.json").is_file(), f"half-built entry in view: {entry}"
    assert not list(project.home.rglob("*.tmp"))
    hub = Path(os.environ["HF_HUB_CACHE"])
    assert not list(hub.rglob("*.incomplete")), list(hub.rglob("*.incomplete"))
    code, out, err = run_inprocess(capsys, "plan", "--detailed-exitcode")
    assert code == ExitCode.CHANGES, out + err
    assert pending in out, out
    assert project.chat("chat").status_code == 200


def test_disk_full_during_fetch_and_conversion_keeps_the_served_generation(
    tiny_hub: FakeHub,
    wide_model: Path,
    small_disk: SmallDisk,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny_hub.add_repo_from_dir(BIG, wide_model, metadata={"library_name": "mlx", "tags": ["mlx"]})
    project = _on_disk(monkeypatch, tmp_path, small_disk, hf_cache=small_disk.root / "hf")
    hub_cache = Path(os.environ["HF_HUB_CACHE"])
    try:
        project.write(CHAT)
        before = _served_before(project, capsys)
        project.write(CHAT + f'[models.wide]\nrepo = "{BIG}"\ncontext = 4096\n')

        # 1. Too little space from the start: refused before the weights are requested.
        small_disk.fill(leave=1 * MIB)
        tiny_hub.clear_requests()
        code, out, err = run_inprocess(capsys, "apply", "--yes")
        out += err
        assert code == ExitCode.ERROR, out
        assert f"not enough free disk space in {hub_cache}" in out, out
        assert "free up space" in out and "Traceback" not in out, out
        assert not [r for r in tiny_hub.requests if r.file == "model.safetensors"]
        _unchanged(project, before, "+ model.wide  (new model)", capsys)

        # 2. The disk fills while the weights download (another writer takes the space).
        small_disk.free_up()
        tiny_hub.inject("slow", repo_id=BIG, bytes_per_second=256 * 1024, max_seconds=60)
        proc = project.popen("apply", "--yes")
        blobs = hub_cache / f"models--{BIG.replace('/', '--')}" / "blobs"

        def downloading() -> bool:  # (the client writes what arrives in chunks of up to 10 MB)
            return any(blobs.glob("*.incomplete")) or proc.poll() is not None

        assert wait_for(downloading, timeout=60) and proc.poll() is None, proc.poll()
        small_disk.fill(leave=0)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.ERROR, output
        assert f"no space left on the disk holding {blobs.parent}" in output, output
        assert "while downloading" in output and "HF_HUB_CACHE" in output, output
        # Every write of that apply met the full disk: each says so, none is "a bug".
        assert "Traceback" not in output and "a bug in local-ai" not in output, output
        tiny_hub.clear_faults()
        _unchanged(project, before, "+ model.wide  (new model)", capsys)

        # 3. A conversion that does not fit: its source (~860 KB) does, its output (~430 KB
        # of fp16 weights) does not.
        small_disk.free_up()
        project.write(CHAT + f'[models.conv]\nrepo = "{HF}"\nquantize = "fp16"\ncontext = 4096\n')
        small_disk.fill(leave=1100 * 1024)
        code, out, err = run_inprocess(capsys, "apply", "--yes")
        out += err
        assert code == ExitCode.ERROR, out
        assert "✓ fetch:conv" in out and (hub_cache / "models--org--tiny-chat").is_dir(), out
        staging = project.home / "staging"
        assert f"convert:conv: no space left on the disk holding {staging}" in out, out
        assert "local-ai gc" in out and "Traceback" not in out and "a bug" not in out, out
        _unchanged(project, before, "+ model.conv  (new model)", capsys)

        # 4. Space is back: the rerun converges and serves both.
        small_disk.free_up()
        project.write(
            CHAT
            + f'[models.wide]\nrepo = "{BIG}"\ncontext = 4096\n'
            + f'[models.conv]\nrepo = "{HF}"\nquantize = "fp16"\ncontext = 4096\n'
        )
        code, out, err = run_inprocess(capsys, "apply", "--yes")
        assert code == 0, out + err
        assert "Generation 2" in out, out
        assert run_inprocess(capsys, "plan", "--detailed-exitcode")[0] == 0
        for alias in ("chat", "wide", "conv"):
            assert project.chat(alias).status_code == 200, alias
    finally:
        project.cli("server", "stop", timeout=60)
