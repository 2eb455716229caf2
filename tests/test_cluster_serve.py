"""Serving a sharded alias: the group launch command, the alias map apply builds for it, and
the gateway's group supervisor (docs/cluster.md). Host "b" is this machine with its own
local-ai home, reached through tests/harness/fakessh.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from local_ai.cluster.launch import free_ports, group_command
from local_ai.cluster.observe import HostReport
from local_ai.manifest.load import load_manifest
from local_ai.reconcile.serving import group_of
from local_ai.server.gateway.group import parse_rank_line
from local_ai.store.state import InstalledModel
from tests.harness.fakessh import sharded_tiny


def test_the_group_command_starts_rank_0_with_its_config_and_the_others_following(
    tmp_path: Path,
) -> None:
    group = {"alias": "tiny", "parallel": "pipeline", "hosts": ["a", "b"],
             "model_paths": ["/s/x y", "/t/it's"], "max_batch_size": 4, "debug": False}  # fmt: skip
    # Each rank's "python" prints the arguments it would get, one per line.
    show = "printf '%s\\n'"
    argv = group_command(tmp_path / "h.json", 40000, [show, show], tmp_path / "e e.json", group)
    assert argv[1:6] == ["--hostfile", str(tmp_path / "h.json"), "--starting-port", "40000", "--"]
    assert argv[6:8] == ["sh", "-c"]
    script = argv[8]

    def rank(n: int) -> list[str]:
        env = {**os.environ, "MLX_RANK": str(n)}
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert rank(0) == ["-m", "local_ai.server.engine", "--config", str(tmp_path / "e e.json")]
    follower = rank(1)
    assert follower[:3] == ["-m", "local_ai.server.engine", "--follow"]
    assert json.loads(follower[3]) == group  # quoting survives spaces and quotes
    stray = subprocess.run(["sh", "-c", script], env={**os.environ, "MLX_RANK": "2"},
                           capture_output=True, text=True)  # fmt: skip
    assert stray.returncode == 64 and "no rank 2" in stray.stderr


def test_ports_are_free_ones_on_loopback_and_mlx_default_between_hosts() -> None:
    port = free_ports(["127.0.0.1", "127.0.0.1"])
    assert 1024 < port < 65535 and port != 32323
    assert free_ports(["127.0.0.1", "192.168.2.2"]) == 32323


def test_rank_lines_are_parsed_and_anything_else_ignored() -> None:
    line = 'local-ai-rank {"rank": 1, "host": "b", "pid": 4242}\n'
    assert parse_rank_line(line) == {"rank": 1, "host": "b", "pid": 4242}
    assert parse_rank_line("local-ai-rank {not json}") is None
    assert parse_rank_line('local-ai-rank {"rank": "1", "pid": 2}') is None
    assert parse_rank_line('[INFO] local-ai-rank {"rank": 1, "pid": 2}') is None


def _report(name: str, store: str | None, digests: tuple[str, ...]) -> HostReport:
    return HostReport(name=name, reachable=True, store=store, digests=digests)


def test_a_sharded_alias_is_served_by_a_group_once_every_host_has_its_entry(
    tmp_path: Path, isolated_home: Path
) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(sharded_tiny(tmp_path / "model", tmp_path / "host-b"))
    loaded = load_manifest(manifest).manifest
    spec, cluster = loaded.models["tiny"], loaded.cluster
    assert cluster is not None
    model = InstalledModel(
        alias="tiny",
        source="x",
        format="mlx",
        location=str(isolated_home / "store" / "abc-tiny"),
        location_kind="store",
    )
    lacking = {"b": _report("b", "/far/store", ())}
    assert group_of("tiny", spec, cluster, model, "abc", lacking) is None
    held = {"b": _report("b", "/far/store/", ("abc",))}
    group = group_of("tiny", spec, cluster, model, "abc", held)
    assert group is not None
    assert group.model_paths == [model.location, "/far/store/abc-tiny"]
    assert group.hosts == ["a", "b"] and group.parallel == "pipeline"
    assert group.pythons == [shlex.quote(sys.executable)] * 2
    assert group.ssh[0] is None and group.ssh[1] is not None
    assert group.ssh[1][0] == "ssh" and group.ssh[1][-1] == "me@b.local"
    assert group.hostfile == str(isolated_home / "run" / "cluster" / "tiny.hostfile.json")
    # Copied by this apply: served although the snapshot did not see it there.
    copied = group_of("tiny", spec, cluster, model, "abc", lacking, copied={"b"})
    assert copied == group


def test_the_group_learns_rank_pids_and_names_the_first_rank_mlx_launch_saw_end(
    isolated_home: Path,
) -> None:
    from local_ai.server.aliases import GroupEntry
    from local_ai.server.gateway.group import GroupSupervisor
    from local_ai.server.gateway.supervisor import EngineSpec

    group = GroupEntry(parallel="tensor", backend="ring", hosts=["a", "b"],
                       model_paths=["/x", "/y"], pythons=["p", "p"],
                       addresses=["127.0.0.1"] * 2, ssh=[None, ["ssh", "--", "b"]],
                       hostfile="/h")  # fmt: skip
    spec = EngineSpec(socket="/s", aliases_file="/a", max_loaded_models=1, idle_ttl_s=0,
                      prompt_cache=False)  # fmt: skip
    supervisor = GroupSupervisor("t", group, spec)
    supervisor._note('local-ai-rank {"rank": 1, "host": "b", "pid": 77}\n')
    assert supervisor.ranks[1]["pid"] == 77 and supervisor.ranks[1]["state"] == "loaded"
    supervisor._note("\x1b[33m[WARN] Node with rank 1 exited with code 137 \x1b[0m\n")
    supervisor._note("\x1b[33m[WARN] Node with rank 0 exited with code -15 \x1b[0m\n")
    assert supervisor.lost == "rank 1 on host b: exited with code 137"
    assert supervisor.ranks[1]["state"] == "dead"
    assert supervisor.ranks[1]["last_error"] == "exited with code 137"
