"""Served = applied: what the live server serves (its status API and a completion) is what the
current generation recorded, for every kind of source, after apply, server restart, stop +
start, rollback (then started as launchd starts it) and a second apply. The real CLI in
subprocesses, the real daemon, tiny models; one home for the whole matrix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.harness import gguf_export as ge
from tests.harness.fakehub import FakeHub
from tests.projects import HF, MLX, Project
from tests.server_helpers import build_chat_model, build_mlx_chat_model, wait_for

GGUF = "org/tiny-chat-GGUF"
Served = dict[str, tuple[str, str | None, str | None]]  # alias -> (path, digest, quantization)


def live(project: Project) -> Served:
    return project.live()


def assert_serves(project: Project, expected: Served, when: str) -> None:
    import time

    print(time.strftime("%H:%M:%S"), when, flush=True)
    assert live(project) == expected, when
    for alias in expected:
        answer = project.chat(alias)
        assert answer.status_code == 200, f"{when}: {alias}: {answer.text}"


def built(store: Path, path: str, level: str) -> tuple[str, str, str]:
    """A conversion local-ai made: in the store, named and addressed by its digest."""
    entry = Path(path)
    assert entry.parent == store and entry.name.endswith(f"-{level}"), path
    return path, entry.name.split("-", 1)[0], level


def start_as_launchd_does(project: Project) -> subprocess.Popen[bytes]:
    """`server start --foreground`, the LaunchAgent's command, once /health says ready."""
    with (project.home / "login.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "local_ai", "server", "start", "--foreground"],
            env={**os.environ, "LOCAL_AI_CONFIG": str(project.manifest)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=project.dir,
        )

    def ready() -> bool:
        try:
            health = httpx.get(f"http://127.0.0.1:{project.port}/health", trust_env=False)
            return bool(health.json().get("status") == "ready")
        except (httpx.HTTPError, ValueError):
            return proc.poll() is not None

    started = wait_for(ready, timeout=180) and proc.poll() is None
    assert started, (project.home / "login.log").read_text()
    return proc


def generations(project: Project) -> list[str]:
    return sorted(p.name for p in (project.home / "generations").glob("*.json"))


@pytest.mark.timeout(900)  # four conversions and five server starts, on a loaded machine
def test_every_source_kind_is_served_as_applied(
    tiny_hub: FakeHub, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_dir = build_chat_model(tmp_path / "hf-dir")
    mlx_dir = build_mlx_chat_model(tmp_path / "mlx-dir")
    gguf_file = ge.export_gguf(hf_dir, tmp_path / "local-Q8_0.gguf", "Q8_0")
    tiny_hub.add_repo(
        GGUF,
        {"tiny-Q8_0.gguf": gguf_file.read_bytes()},
        metadata={"library_name": "gguf", "tags": ["gguf"]},
    )
    matrix = {
        "published": f'repo = "{MLX}"',
        "repo-q": f'repo = "{HF}"\nquantize = "q4"',
        "gguf-q": f'repo = "{GGUF}"\nfile = "tiny-Q8_0.gguf"\nquantize = "q8"',
        "dir": f'path = "{mlx_dir}"',
        "dir-q": f'path = "{hf_dir}"\nquantize = "q4"',
        "file": f'path = "{gguf_file}"',
    }

    def manifest(**change: str) -> str:
        specs = {**matrix, **change}
        return "".join(f"[models.{a}]\n{s}\ncontext = 2048\n" for a, s in specs.items())

    project.write(manifest())
    first = project.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    store = project.home / "store"
    served = live(project)
    one = {
        "published": served["published"],
        "repo-q": built(store, served["repo-q"][0], "q4"),
        "gguf-q": built(store, served["gguf-q"][0], "q8"),
        "dir": (str(mlx_dir), None, "8bit"),
        "dir-q": built(store, served["dir-q"][0], "q4"),
        "file": built(store, served["file"][0], "fp16"),
    }
    assert "/snapshots/" in one["published"][0] and one["published"][1] is None
    assert_serves(project, one, "after apply")

    restarted = project.cli("server", "restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert_serves(project, one, "after server restart")
    assert project.cli("server", "stop").returncode == 0
    started = project.cli("server", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert_serves(project, one, "after server stop + start")

    # A second generation rebuilds one alias; rollback serves the first exactly, and keeps
    # serving it through a restart.
    project.write(manifest(**{"repo-q": f'repo = "{HF}"\nquantize = "q8"'}))
    second = project.cli("apply", "--yes")
    assert second.returncode == 0, second.stdout + second.stderr
    two = {**one, "repo-q": built(store, live(project)["repo-q"][0], "q8")}
    assert_serves(project, two, "after the second generation")
    back = project.cli("rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert_serves(project, one, "after rollback")
    assert project.cli("server", "stop").returncode == 0
    login = start_as_launchd_does(project)
    assert_serves(project, one, "after rollback, started as launchd starts it")

    # apply returns to the manifest; run again, it has nothing to do: no hashing (a hash
    # would hit the armed failpoint and kill it), no new generation.
    back_to_manifest = project.cli("apply", "--yes")
    assert back_to_manifest.returncode == 0, back_to_manifest.stdout + back_to_manifest.stderr
    assert_serves(project, two, "after apply following rollback")
    recorded = generations(project)
    monkeypatch.setenv("LOCAL_AI_FAILPOINT", "hash.file")
    again = project.cli("apply", "--yes")
    monkeypatch.delenv("LOCAL_AI_FAILPOINT")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout and "Generation" not in again.stdout
    assert generations(project) == recorded
    assert_serves(project, two, "after a second apply")
    assert project.cli("server", "stop").returncode == 0
    assert login.wait(timeout=60) == 0
