"""`local-ai plan` and `apply` on a manifest with a [cluster], through the real CLI; the hosts
are this machine reached through a real sshd on 127.0.0.1 (tests/harness/sshd.py), each with its
own local-ai home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clirunner import run_cli
from tests.harness.sshd import HOST_B, install_ssh, path_with, server, sharded_tiny
from tests.harness.tinymodels import build_model
from tests.server_helpers import wait_for


@pytest.fixture
def cluster_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    # deepseek_v2: a tiny architecture mlx-lm 0.31 can split as a pipeline.
    model = build_model(tmp_path / "tiny", "deepseek_v2", num_layers=4)
    host_b = tmp_path / "host-b"
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(sharded_tiny(model, host_b))
    bin_dir = tmp_path / "bin"
    install_ssh(bin_dir)
    return manifest, {"PATH": path_with(bin_dir)}


def test_plan_shows_each_host_share_and_copy(cluster_project: tuple[Path, dict[str, str]]) -> None:
    manifest, env = cluster_project
    done = run_cli("plan", "--config", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "cluster (ring backend, rank 0 = a)" in out
    assert "tiny  rank 0 of 2, layers 2-3:" in out
    assert "tiny  rank 1 of 2, layers 0-1:" in out
    assert f"copy-to-host   to b ({HOST_B}), copy " in out
    done = run_cli("plan", "--config", str(manifest), "--json", env=env)
    data = json.loads(done.stdout)
    assert [h["name"] for h in data["hosts"]] == ["a", "b"]
    assert data["hosts"][1]["copy_bytes"] > 0
    assert data["hosts"][0]["copy_bytes"] == 0


def test_unreachable_host_is_reported_for_its_model(
    cluster_project: tuple[Path, dict[str, str]],
) -> None:
    manifest, env = cluster_project
    text = manifest.read_text().replace(HOST_B, "b.unreachable")
    model = text.split('path = "')[1].split('"')[0]
    manifest.write_text(text + f'[models.solo]\npath = "{model}"\n')
    done = run_cli("plan", "--config", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "+ model.solo  (new model)" in done.stdout  # the other models are planned as usual
    assert (
        f"! model.tiny  (not planned: b is unreachable (ssh failed: {server().refused()}))"
    ) in done.stdout
    assert "1 not planned (!)" in done.stdout


def test_apply_copies_the_weights_and_a_rerun_copies_nothing(
    cluster_project: tuple[Path, dict[str, str]], isolated_home: Path, tmp_path: Path
) -> None:
    manifest, env = cluster_project
    log = tmp_path / "bin" / "ssh.log"
    done = run_cli("apply", "--yes", "--config", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "copy-to-host:tiny@b" in done.stderr and "verified by sha256 there" in done.stderr
    assert (isolated_home / "run" / "cluster" / "tiny.hostfile.json").is_file()
    assert len(list((tmp_path / "host-b" / "store").iterdir())) == 1
    assert "local_ai.cluster.copy receive" in log.read_text()

    log.write_text("")
    again = run_cli("apply", "--yes", "--config", str(manifest), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes" in again.stdout or "no changes" in again.stdout.lower(), again.stdout
    assert "receive" not in log.read_text()  # observed over ssh, nothing sent
    # The dry run still shows the plan.
    assert run_cli("apply", "--dry-run", "--config", str(manifest), env=env).returncode == 0


def test_a_copy_killed_mid_way_leaves_the_host_store_untouched_and_a_rerun_finishes(
    cluster_project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    manifest, env = cluster_project
    killed = run_cli(
        "apply", "--yes", "--config", str(manifest),
        env={**env, "LOCAL_AI_FAILPOINT": "copy-to-host.chunk-sent@2"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stdout + killed.stderr
    store = tmp_path / "host-b" / "store"
    assert not store.is_dir() or not list(store.iterdir())
    incoming = [p for p in (tmp_path / "host-b" / "incoming").iterdir() if p.is_dir()]
    assert len(incoming) == 1
    # What was sent before the kill is still crossing ssh to the host's receiver: wait for it.
    assert wait_for(lambda: sum(p.stat().st_size for p in incoming[0].iterdir()) > 0, 60)
    done = run_cli("apply", "--yes", "--config", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "were there from an interrupted copy" in done.stderr
    assert len(list(store.iterdir())) == 1
    assert not incoming[0].exists()
