"""Served = applied: what the live server serves (its status API and a completion) is what the
current generation recorded, after apply, server restart, stop + start, rollback and a second
apply. The real CLI in subprocesses, the real daemon, tiny models."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.projects import Project
from tests.server_helpers import build_chat_model


def live_models(project: Project) -> dict[str, dict[str, object]]:
    """The running server's own account of each alias (admin view: with its path)."""
    token = (project.home / "run" / "admin-token").read_text().strip()
    response = httpx.get(
        f"http://127.0.0.1:{project.port}/api/status",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )
    response.raise_for_status()
    return {m["alias"]: m for m in response.json()["models"]}


@pytest.mark.xfail(strict=True, reason="server start rebuilds path models from the source dir")
def test_a_path_directory_with_quantize_is_served_converted(
    project: Project, tmp_path: Path
) -> None:
    source = build_chat_model(tmp_path / "hf-model")
    project.write(f'[models.conv]\npath = "{source}"\nquantize = "q4"\ncontext = 4096\n')
    applied = project.cli("apply", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    installed = project.state()["models"]["conv"]  # type: ignore[index]
    assert installed["location"].startswith(str(project.home / "store"))
    live = live_models(project)["conv"]
    assert (live["path"], live["quantization"]) == (installed["location"], "q4")
    assert project.chat("conv").status_code == 200
    restarted = project.cli("server", "restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    live = live_models(project)["conv"]
    assert (live["path"], live["quantization"]) == (installed["location"], "q4")
    again = project.cli("apply", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
