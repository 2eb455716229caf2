"""`local-ai plan` and `apply` on a manifest with a [cluster], through the real CLI; the hosts
are this machine reached through a fake `ssh` (tests/harness/fakessh.py), each with its own
local-ai home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clirunner import run_cli
from tests.harness.fakessh import install_fake_ssh, path_with, two_hosts
from tests.harness.tinymodels import build_model


@pytest.fixture
def cluster_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    # deepseek_v2: a tiny architecture mlx-lm 0.31 can split as a pipeline.
    model = build_model(tmp_path / "tiny", "deepseek_v2", num_layers=4)
    host_b = tmp_path / "host-b"
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(
        two_hosts(host_b)
        + f"""
[server]
autostart = false
[benchmark]
on_apply = false

[models.tiny]
path = "{model}"
hosts = ["a", "b"]
parallel = "pipeline"
"""
    )
    bin_dir = tmp_path / "bin"
    install_fake_ssh(bin_dir)
    return manifest, {"PATH": path_with(bin_dir)}


def test_plan_shows_each_host_share_and_copy(cluster_project: tuple[Path, dict[str, str]]) -> None:
    manifest, env = cluster_project
    done = run_cli("plan", "--config", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "cluster (ring backend, rank 0 = a)" in out
    assert "tiny  rank 0 of 2, layers 2-3:" in out
    assert "tiny  rank 1 of 2, layers 0-1:" in out
    assert "copy-to-host   to b (me@b.local), copy " in out
    assert "apply` refuses to serve it" in out
    done = run_cli("plan", "--config", str(manifest), "--json", env=env)
    data = json.loads(done.stdout)
    assert [h["name"] for h in data["hosts"]] == ["a", "b"]
    assert data["hosts"][1]["copy_bytes"] > 0
    assert data["hosts"][0]["copy_bytes"] == 0


def test_unreachable_host_is_reported_for_its_model(
    cluster_project: tuple[Path, dict[str, str]],
) -> None:
    manifest, env = cluster_project
    manifest.write_text(manifest.read_text().replace("me@b.local", "b.unreachable"))
    done = run_cli("plan", "--config", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "! model.tiny  (not planned: b is unreachable (ssh failed: ssh: connect to host "
        "b.unreachable port 22: Connection refused))"
    ) in done.stdout
    assert "1 not planned (!)" in done.stdout


def test_apply_refuses_a_sharded_model_and_changes_nothing(
    cluster_project: tuple[Path, dict[str, str]], isolated_home: Path
) -> None:
    manifest, env = cluster_project
    done = run_cli("apply", "--yes", "--config", str(manifest), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "models.tiny is sharded across [cluster] hosts" in done.stderr
    assert "cannot apply yet" in done.stderr
    assert "--target" in done.stderr  # the hint
    assert not (isolated_home / "state.json").exists()
    assert not (isolated_home / "run" / "aliases.json").exists()
    # The dry run still shows the plan.
    assert run_cli("apply", "--dry-run", "--config", str(manifest), env=env).returncode == 0
