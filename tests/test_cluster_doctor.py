"""`local-ai doctor --cluster`: the mlx.launch hostfile and smoke command it generates (read
back by mlx's own parser), Thunderbolt/RDMA readiness parsed from captured macOS output, and a
real 2-rank ring all-reduce on 127.0.0.1 with rank 1 reached through a real sshd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local_ai.cluster.launch import hostfile, launcher, parse_smoke, smoke_command
from local_ai.cluster.thunderbolt import (
    READINESS_MARK,
    READINESS_SCRIPT,
    parse_hardware_ports,
    parse_ibv_devices,
    parse_readiness,
    problems,
)
from local_ai.manifest.load import parse_manifest
from local_ai.manifest.models import ClusterSettings
from tests.clirunner import run_cli
from tests.harness.sshd import HOST_B, install_ssh, path_with, two_hosts

DATA = Path(__file__).parent / "data" / "cluster"
UUID_STUDIO = "AAAA0001-0000-0000-0000-000000000001"
UUID_MINI = "BBBB0001-0000-0000-0000-000000000001"


def cluster(backend: str = "ring", extra: str = "") -> ClusterSettings:
    rdma = backend == "jaccl"
    text = f"""
[cluster]
rank0 = "studio"
backend = "{backend}"
[cluster.hosts.studio]
address = "192.168.2.1"
{'rdma = { mini = "rdma_en2" }' if rdma else ""}
[cluster.hosts.mini]
ssh = "me@mini.local"
address = "192.168.2.2"
python = "~/.local/share/uv/tools/local-ai/bin/python"
{'rdma = { studio = "rdma_en2" }' if rdma else ""}
{extra}
"""
    settings = parse_manifest(text).cluster
    assert settings is not None
    return settings


@pytest.mark.parametrize("backend", ["ring", "jaccl"])
def test_hostfile_is_what_mlx_launch_reads(backend: str, tmp_path: Path) -> None:
    from mlx._distributed_utils.common import Hostfile

    doc = hostfile(cluster(backend))
    rdma = {"ring": ([], []), "jaccl": ([None, "rdma_en2"], ["rdma_en2", None])}[backend]
    assert doc == {
        "backend": backend,
        "envs": [],
        "hosts": [
            {"ssh": "127.0.0.1", "ips": ["192.168.2.1"], "rdma": rdma[0]},
            {"ssh": "me@mini.local", "ips": ["192.168.2.2"], "rdma": rdma[1]},
        ],
    }
    path = tmp_path / "hostfile.json"
    path.write_text(json.dumps(doc))
    parsed = Hostfile.from_file(path)  # mlx's own reader
    assert parsed.backend == backend
    assert [(h.rank, h.ssh_hostname, h.ips) for h in parsed.hosts] == [
        (0, "127.0.0.1", ["192.168.2.1"]),
        (1, "me@mini.local", ["192.168.2.2"]),
    ]


def test_smoke_command_picks_each_hosts_python(tmp_path: Path) -> None:
    argv = smoke_command(cluster(), tmp_path / "h.json", 40000)
    start = len(launcher())
    assert argv[:start] == launcher()
    argv = argv[start - 1 :]  # as if the launcher were one word
    assert argv[1:8] == [
        "--hostfile",
        str(tmp_path / "h.json"),
        "--starting-port",
        "40000",
        "--",
        "sh",
        "-c",
    ]
    script = argv[8]
    assert f"0) py={sys.executable} ;;" in script
    assert '1) py="$HOME"/.local/share/uv/tools/local-ai/bin/python ;;' in script
    assert subprocess.run(["/bin/sh", "-n", "-c", script]).returncode == 0


def test_smoke_output_needs_every_rank_and_the_right_sum() -> None:
    good = [
        '{"local-ai-smoke": 1, "rank": 0, "size": 3, "sum": [6.0, 6.0, 6.0, 6.0]}',
        "[WARN] noise",
        '\x1b[0m{"local-ai-smoke": 1, "rank": 2, "size": 3, "sum": [6.0, 6.0, 6.0, 6.0]}',
        '{"local-ai-smoke": 1, "rank": 1, "size": 3, "sum": [6.0, 6.0, 6.0, 6.0]}',
    ]
    assert parse_smoke("\n".join(good), 3) == (True, "all-reduce across 3 ranks agreed")
    assert parse_smoke("\n".join(good[:2]), 3) == (False, "rank 1, 2 did not report")
    wrong = [*good[:3], good[3].replace("6.0, 6.0, 6.0, 6.0", "3.0, 3.0, 3.0, 3.0")]
    assert parse_smoke("\n".join(wrong), 3) == (False, "rank 1 computed a wrong all-reduce")


def _readiness_output(host: str, macos: str = "26.2", ibv: str | None = None) -> str:
    ibv_text = ibv if ibv is not None else (DATA / f"{host}_ibv_devices.txt").read_text()
    status = "enabled" if ibv_text.strip() else "disabled"
    return (
        f"{READINESS_MARK}\n@@system\nDarwin\n@@sw_vers\n{macos}\n@@rdma_ctl\n{status}\n"
        f"@@ibv_devices\n{ibv_text}\n"
        f"@@thunderbolt\n{(DATA / f'{host}_thunderbolt.json').read_text()}\n"
        f"@@ports\n{(DATA / f'{host}_ports.txt').read_text()}\n@@end\n"
    )


def test_macos_tool_output_is_parsed() -> None:
    assert parse_ibv_devices((DATA / "studio_ibv_devices.txt").read_text()) == (
        "rdma_en2",
        "rdma_en3",
    )
    assert parse_hardware_ports((DATA / "studio_ports.txt").read_text()) == {
        "Ethernet": "en0",
        "Thunderbolt Bridge": "bridge0",
        "Thunderbolt 1": "en2",
        "Thunderbolt 2": "en3",
    }
    studio = parse_readiness("studio", _readiness_output("studio"), "", 0)
    mini = parse_readiness("mini", _readiness_output("mini"), "", 0)
    assert studio.macos == "26.2"
    assert studio.rdma_status == "enabled"
    assert studio.rdma_devices == ("rdma_en2", "rdma_en3")
    assert [(p.interface, p.peer) for p in studio.ports] == [("en2", UUID_MINI), ("en3", None)]
    assert [p.interface for p in studio.cabled_to(mini)] == ["en2"]
    assert [p.interface for p in mini.cabled_to(studio)] == ["en2"]
    # The script itself is valid sh.
    assert subprocess.run(["/bin/sh", "-n", "-c", READINESS_SCRIPT]).returncode == 0


def test_jaccl_readiness_problems() -> None:
    jaccl = cluster("jaccl")
    ready = {
        "studio": parse_readiness("studio", _readiness_output("studio"), "", 0),
        "mini": parse_readiness("mini", _readiness_output("mini"), "", 0),
    }
    assert problems(jaccl, ready) == {"studio": [], "mini": []}
    assert problems(cluster("ring"), ready) == {"studio": [], "mini": []}

    ready["mini"] = parse_readiness("mini", _readiness_output("mini", macos="15.5", ibv=""), "", 0)
    assert problems(jaccl, ready)["mini"] == [
        "macOS 15.5: RDMA over Thunderbolt needs 26.2+",
        "RDMA is disabled (`rdma_ctl status`): enable RDMA once in macOS Recovery with "
        "`rdma_ctl enable`, then reboot (Apple TN3205)",
    ]
    other = jaccl.model_copy(
        update={
            "hosts": {
                **jaccl.hosts,
                "mini": jaccl.hosts["mini"].model_copy(update={"rdma": {"studio": "rdma_en5"}}),
            }
        }
    )
    ready["mini"] = parse_readiness("mini", _readiness_output("mini"), "", 0)
    assert problems(other, ready)["mini"] == [
        "rdma.studio = 'rdma_en5' is not one of its devices (rdma_en2)"
    ]
    lone = (DATA / "mini_thunderbolt.json").read_text().replace(UUID_STUDIO, "CCCC")
    text = _readiness_output("mini").replace((DATA / "mini_thunderbolt.json").read_text(), lone)
    ready["mini"] = parse_readiness("mini", text, "", 0)
    assert problems(jaccl, ready)["mini"] == [
        "no Thunderbolt cable to studio (jaccl needs every pair cabled)"
    ]


def test_unreachable_readiness() -> None:
    ready = parse_readiness(
        "mini", "", "ssh: Could not resolve hostname mini: nodename nor servname provided\n", 255
    )
    assert not ready.reachable
    assert (
        ready.error
        == "ssh failed: ssh: Could not resolve hostname mini: nodename nor servname provided"
    )


def test_doctor_cluster_runs_a_real_ring_all_reduce(tmp_path: Path) -> None:
    """Two ranks on 127.0.0.1 over the ring backend; rank 1 is a host reached through the sshd."""
    bin_dir = tmp_path / "bin"
    install_ssh(bin_dir)
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(two_hosts(tmp_path / "host-b"))
    env = {"PATH": path_with(bin_dir)}
    done = run_cli("doctor", "--cluster", "--json", "--config", str(manifest), env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["host a (rank 0)"]["status"] == "pass"
    assert checks["host b"]["status"] == "pass"
    assert checks["versions b"]["status"] == "pass"
    assert checks["ring all-reduce"]["status"] == "pass", checks["ring all-reduce"]
    assert checks["ring all-reduce"]["detail"].startswith("all-reduce across 2 ranks agreed in ")
    assert checks["thunderbolt b"]["status"] == "info"

    manifest.write_text(manifest.read_text().replace(HOST_B, "b.unreachable"))
    done = run_cli("doctor", "--cluster", "--json", "--config", str(manifest), env=env)
    assert done.returncode == 1
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["host b"]["status"] == "fail"
    assert "Connection refused" in checks["host b"]["detail"]
    assert checks["ring all-reduce"] == {
        "name": "ring all-reduce",
        "status": "fail",
        "detail": "not run: b unreachable",
        "fix": "fix ssh first",
    }


def test_an_exited_rank_counts_as_running_until_its_output_is_read() -> None:
    """mlx.launch reads a rank's pipes only while its poll() is None: a rank that printed its
    report and exited before the next read must still have that report read."""
    import os

    from local_ai.cluster.launch import UntilDrained

    code = "import sys; print('report'); sys.stderr.write('bye')"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.wait(timeout=120) == 0  # exited, nothing read yet
    assert proc.stdout is not None and proc.stderr is not None
    seen = UntilDrained(proc)
    assert seen.poll() is None and seen.stdout is proc.stdout
    assert os.read(proc.stdout.fileno(), 100) == b"report\n"
    assert seen.poll() is None  # stderr still holds its part
    assert os.read(proc.stderr.fileno(), 100) == b"bye"
    assert seen.poll() == 0
    proc.stdout.close()
    proc.stderr.close()


def test_starting_port_is_mlx_default_between_real_hosts() -> None:
    from local_ai.cluster.launch import DEFAULT_PORT, starting_port

    assert starting_port(cluster()) == DEFAULT_PORT == 32323
    loopback = parse_manifest(two_hosts(Path("/tmp/b"))).cluster
    assert loopback is not None
    port = starting_port(loopback)
    import socket

    for p in (port, port + 1):  # both ranks' ports are free to bind right now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", p))
