"""Observing cluster hosts: the command each host runs, parsing what hosts print (captured
macOS and Linux samples), and a real run through ssh to a real sshd on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from local_ai.cluster.observe import (
    REPORT_MARK,
    host_commands,
    observe_hosts,
    parse_report,
    report_script,
    ssh_argv,
)
from local_ai.hardware import (
    GIB,
    hardware_from_linux,
    hardware_from_sysctl,
    parse_cpuinfo,
    parse_meminfo,
    parse_sysctl,
)
from local_ai.manifest.load import parse_manifest
from tests.harness.sshd import HOST_B, install_ssh, path_with, server, two_hosts

DATA = Path(__file__).parent / "data" / "hardware"
ANSWER = {
    "python": "3.11.9",
    "executable": "/Users/me/.local/share/uv/tools/local-ai/bin/python",
    "local-ai": "0.1.0",
    "mlx": "0.31.2",
    "mlx-lm": "0.31.3",
    "store": "/Users/me/Library/Application Support/local-ai/store",
    "digests": ["0123456789abcdef"],
    "free_disk": 900 * GIB,
}


def manifest_text(extra_hosts: str = "", home_b: Path = Path("/tmp/host-b")) -> str:
    return two_hosts(home_b, extra_hosts)


def test_ssh_command_is_batch_mode_and_ends_options() -> None:
    assert ssh_argv("me@mini.local") == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ServerAliveInterval=15",
        "--",
        "me@mini.local",
        "/bin/sh",
        "-s",
    ]


def test_rank0_runs_here_and_the_others_over_ssh() -> None:
    cluster = parse_manifest(manifest_text()).cluster
    assert cluster is not None
    commands = host_commands(cluster)
    assert [(c.name, c.local, c.argv[0]) for c in commands] == [
        ("a", True, "/bin/sh"),
        ("b", False, "ssh"),
    ]
    assert f"py={sys.executable}" in commands[1].script


def test_script_quotes_home_paths_and_is_valid_sh() -> None:
    script = report_script("~/envs/local ai/bin/python", "/Volumes/Models/local-ai home")
    assert "py=\"$HOME\"/'envs/local ai/bin/python'" in script
    assert "LOCAL_AI_HOME='/Volumes/Models/local-ai home' \"$py\"" in script
    # sh parses it (-n: read, do not run).
    done = subprocess.run(["/bin/sh", "-n"], input=script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def _captured(system: str, body: str, answer: dict[str, object] | str) -> str:
    line = answer if isinstance(answer, str) else json.dumps(answer)
    return f"Last login: noise\n{REPORT_MARK}\n@@uname\n{system}\n{body}@@python\n{line}\n@@end\n"


def test_macos_report_reads_memory_like_this_machine_would() -> None:
    sysctl = (DATA / "macos_m3_ultra_512gb.txt").read_text()
    out = _captured("Darwin 24.5.0", f"@@sysctl\n{sysctl}\n", ANSWER)
    report = parse_report("studio", out, "", 0)
    expected = hardware_from_sysctl(parse_sysctl(sysctl), os_version="Darwin 24.5.0")
    assert report.reachable and report.error is None
    assert report.hardware is not None
    assert report.hardware.chip == expected.chip == "Apple M3 Ultra"
    assert report.hardware.total_memory_bytes == expected.total_memory_bytes == 512 * GIB
    assert report.hardware.wired_limit_bytes == expected.wired_limit_bytes
    assert report.hardware.usable_memory_bytes == expected.usable_memory_bytes
    assert report.hardware.platform == "macos"
    assert report.version("mlx") == "0.31.2"
    assert report.version("local-ai") == "0.1.0"
    assert report.digests == ("0123456789abcdef",)
    assert report.free_disk == 900 * GIB


def test_linux_report() -> None:
    meminfo = (DATA / "linux_epyc_vm_meminfo.txt").read_text()
    cpuinfo = (DATA / "linux_epyc_vm_cpuinfo.txt").read_text()
    out = _captured(
        "Linux 6.8.0-45-generic", f"@@meminfo\n{meminfo}\n@@cpuinfo\n{cpuinfo}\n", ANSWER
    )
    report = parse_report("box", out, "", 0)
    expected = hardware_from_linux(parse_meminfo(meminfo), parse_cpuinfo(cpuinfo))
    assert report.hardware is not None
    assert report.hardware.platform == "linux"
    assert report.hardware.chip == "AMD EPYC"
    assert report.hardware.usable_memory_bytes == expected.usable_memory_bytes
    assert report.hardware.os_version == "Linux 6.8.0-45-generic"


def test_ssh_failure_is_an_unreachable_report() -> None:
    err = "ssh: connect to host mini.local port 22: Operation timed out\n"
    report = parse_report("mini", "", err, 255)
    assert not report.reachable
    assert report.error == f"ssh failed: {err.strip()}"
    denied = parse_report("mini", "", "me@mini.local: Permission denied (publickey).\n", 255)
    assert denied.error == "ssh failed: me@mini.local: Permission denied (publickey)."


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        ("no Python at /opt/py/bin/python", "did not answer (no Python at /opt/py/bin/python)"),
        (
            {**ANSWER, "local-ai": None, "error": "ModuleNotFoundError: No module named 'x'"},
            "local-ai is not usable there (ModuleNotFoundError",
        ),
    ],
)
def test_host_without_local_ai_is_reachable_with_the_reason(
    answer: dict[str, object] | str, needle: str
) -> None:
    sysctl = (DATA / "macos_m2_pro_32gb.txt").read_text()
    out = _captured("Darwin 24.5.0", f"@@sysctl\n{sysctl}\n", answer)
    report = parse_report("mini", out, "", 0)
    assert report.reachable
    assert report.hardware is not None and report.hardware.total_memory_bytes == 32 * GIB
    assert report.error is not None and needle in report.error


def test_cut_short_report_says_so() -> None:
    out = f"{REPORT_MARK}\n@@uname\nDarwin 24.5.0\n@@sysctl\nhw.memsize: 17179869184\n"
    report = parse_report("mini", out, "Connection to mini closed by remote host.\n", 255)
    assert report.reachable
    assert report.error is not None
    assert "cut short (Connection to mini closed by remote host.)" in report.error


def test_real_hosts_through_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 runs here; host b over ssh with its own store; host c cannot be reached."""
    bin_dir = tmp_path / "bin"
    log = install_ssh(bin_dir)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    home_b = tmp_path / "host-b"
    entry = home_b / "store" / "feedfacecafebeef-tiny"
    entry.mkdir(parents=True)
    (entry / ".local-ai.json").write_text("{}")
    text = manifest_text(
        extra_hosts='[cluster.hosts.c]\nssh = "c.unreachable"\naddress = "127.0.0.1"\n',
        home_b=home_b,
    )
    cluster = parse_manifest(text).cluster
    assert cluster is not None

    reports = observe_hosts(cluster, timeout=120)

    assert list(reports) == ["a", "b", "c"]
    a, b, c = reports["a"], reports["b"], reports["c"]
    for report in (a, b):
        assert report.reachable, report.error
        assert report.error is None
        assert report.hardware is not None and report.hardware.total_memory_bytes > 0
        assert report.version("mlx") == metadata.version("mlx")
        assert report.version("mlx-lm") == metadata.version("mlx-lm")
        assert report.version("local-ai") == metadata.version("local-ai")
        assert report.free_disk is not None and report.free_disk > 0
    assert b.store == str(home_b / "store")
    assert b.digests == ("feedfacecafebeef",)
    assert a.digests == ()  # this test's own (empty) LOCAL_AI_HOME
    assert not c.reachable
    assert c.error == f"ssh failed: {server().refused()}"
    calls = log.read_text().splitlines()
    options = "-o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=15"
    assert sorted(calls) == [
        f"{options} -- c.unreachable /bin/sh -s",
        f"{options} -- {HOST_B} /bin/sh -s",
    ]
