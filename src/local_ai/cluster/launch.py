"""MLX's distributed launcher for a [cluster]: the hostfile it reads and a smoke all-reduce
across the hosts (``local-ai doctor --cluster``).

Facts from mlx 0.31's launcher (mlx/_distributed_utils/launch.py): the hostfile is JSON
``{"backend", "envs", "hosts": [{"ssh", "ips", "rdma"}]}`` in rank order; a host whose ``ssh``
is ``127.0.0.1`` runs without ssh; the ring backend needs an IP per host and listens from
``--starting-port`` upwards, one port per rank; jaccl needs, per host, one RDMA device per
peer (null for itself) and reaches rank 0's first IP as its coordinator. Every rank runs the
same command, so the smoke command picks each host's Python by ``MLX_RANK``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from local_ai import settings
from local_ai.cluster.observe import host_python, rank_order, shell_path, ssh_to, unshell_path
from local_ai.manifest.models import ClusterHost, ClusterSettings, is_loopback
from local_ai.util.atomic import atomic_write_text
from local_ai.util.ports import port_free

LOCAL_SSH = "127.0.0.1"  # mlx.launch runs this host's rank without ssh
DEFAULT_PORT = 32323  # mlx.launch's --starting-port: what a firewall between Macs lets through
SMOKE_MARK = "local-ai-smoke"
SMOKE_TIMEOUT_S = 120.0
_SMOKE_CODE = (
    "import json, mlx.core as mx\n"
    "g = mx.distributed.init(strict=True)\n"
    "x = mx.distributed.all_sum(mx.ones(4) * (g.rank() + 1))\n"
    "mx.eval(x)\n"
    f"print(json.dumps({{{SMOKE_MARK!r}: 1, 'rank': g.rank(), 'size': g.size(), "
    "'sum': x.tolist()}), flush=True)\n"
)


def hostfile(cluster: ClusterSettings, names: list[str] | None = None) -> dict[str, object]:
    """mlx.launch's hostfile for `names` (default: every host), in rank order."""
    names = names or rank_order(cluster)
    hosts = []
    for name in names:
        host = cluster.hosts[name]
        entry: dict[str, object] = {
            "ssh": LOCAL_SSH if name == cluster.rank0 else host.ssh,
            "ips": [host.address] if host.address else [],
        }
        if cluster.backend == "jaccl":
            entry["rdma"] = [None if peer == name else host.rdma.get(peer) for peer in names]
        else:
            entry["rdma"] = []
        hosts.append(entry)
    return {"backend": cluster.backend, "envs": [], "hosts": hosts}


def launcher() -> list[str]:
    """The argv start that runs `mlx.launch`: this environment's (next to this Python) through
    `quiet_mlx_launch`, else the one on PATH."""
    beside = Path(sys.executable).parent / "mlx.launch"
    if beside.exists():
        return [sys.executable, "-m", "local_ai.cluster.launch", "mlx"]
    return ["mlx.launch"]


def quiet_mlx_launch(args: list[str]) -> int:
    """mlx.launch with `args`, without its idle spin (mlx 0.31): each rank's output loop also
    selects the rank's stdin pipe for writing, always ready, and its main loop selects our
    stdin, always ready on /dev/null: both loops then never sleep (a core while ranks idle).
    Nothing is ever forwarded to the ranks' stdin, so here both selects wait for output only;
    and an exited rank's output is read to the end (`UntilDrained`)."""
    import select

    mlx_launch: Any = None
    with contextlib.suppress(ImportError):
        from mlx._distributed_utils import launch as mlx_launch
    if not callable(getattr(mlx_launch, "select", None)) or not callable(
        getattr(mlx_launch, "main", None)
    ):
        # Another mlx layout: its own mlx.launch, spin or not, rather than no group at all.
        beside = Path(sys.executable).parent / "mlx.launch"
        os.execv(str(beside), [str(beside), *args])  # noqa: S606 (argv, no shell)

    def select_reads(reads: Any, writes: Any, errors: Any, timeout: float | None = None) -> Any:
        readable, _, failed = select.select(reads, [], errors, timeout)
        return readable, [], failed

    mlx_launch.select = select_reads
    remote = getattr(mlx_launch, "RemoteProcess", None)
    if isinstance(remote, type) and isinstance(getattr(remote, "process", None), property):

        class Drained(remote):  # type: ignore[misc,valid-type]
            @property
            def process(self) -> Any:
                return UntilDrained(super().process)

        mlx_launch.RemoteProcess = Drained
    never, _held = os.pipe()  # a stdin that never has data nor ends while this process runs
    os.dup2(never, 0)
    sys.argv = ["mlx.launch", *args]
    mlx_launch.main()
    return 0  # as mlx.launch: 0 even when a rank failed (its "Node with rank" note says so)


class UntilDrained:
    """A rank's Popen as mlx.launch's output loop sees it. That loop reads a rank's pipes only
    `while p.poll() is None`, so a rank that prints and exits before the loop's next read loses
    its last lines (on a busy machine, the smoke's report): here a rank counts as running
    until its exit and every byte it wrote has been read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proc, name)

    def poll(self) -> int | None:
        code = self._proc.poll()
        if code is None:
            return None
        pipes = (self._proc.stdout, self._proc.stderr)
        return None if any(p is not None and unread_bytes(p.fileno()) for p in pipes) else code


def unread_bytes(fd: int) -> int:
    """Bytes waiting in the pipe `fd` (0 once read, closed or not a pipe)."""
    import fcntl
    import termios

    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 0
    return int.from_bytes(buf, sys.byteorder)


def smoke_command(cluster: ClusterSettings, hostfile_path: Path, port: int) -> list[str]:
    """mlx.launch running one all-reduce on every host, each with its own Python."""
    names = rank_order(cluster)
    cases = " ".join(
        f"{rank}) py={_python_for(cluster, name)} ;;" for rank, name in enumerate(names)
    )
    script = f'case "$MLX_RANK" in {cases} esac; exec "$py" -c {shlex.quote(_SMOKE_CODE)}'
    return launch_argv(hostfile_path, port, script)


def launch_argv(hostfile_path: Path, port: int, script: str) -> list[str]:
    """mlx.launch running the sh `script` on every host (it picks its part by $MLX_RANK)."""
    return [
        *launcher(),
        "--hostfile",
        str(hostfile_path),
        "--starting-port",
        str(port),
        "--",
        "sh",  # a name, not a path: mlx.launch runs an existing file path as a Python script
        "-c",
        script,
    ]


def rank_pythons(cluster: ClusterSettings, names: list[str]) -> list[str]:
    """Each rank's Python as a shell path, rank order (what mlx.launch's command runs)."""
    return [_python_for(cluster, name) for name in names]


def rank_ssh(cluster: ClusterSettings, names: list[str]) -> list[list[str] | None]:
    """Per rank, the ssh argv that runs a command on its host (None: rank 0, this machine)."""
    return [None if n == cluster.rank0 else ssh_to(str(cluster.hosts[n].ssh)) for n in names]


def recorded_host(ssh: list[str], python: str, model_path: str) -> ClusterHost:
    """A rank's host as its group recorded it (`rank_ssh`, `rank_pythons`, the entry in its
    store): how rank 0 still reaches it once [cluster.hosts] no longer names it."""
    home = PurePosixPath(model_path).parent.parent  # <LOCAL_AI_HOME>/store/<entry>
    return ClusterHost(ssh=ssh[-1], python=unshell_path(python), home=str(home))


def _python_for(cluster: ClusterSettings, name: str) -> str:
    return shell_path(sys.executable if name == cluster.rank0 else host_python(cluster.hosts[name]))


@dataclass(frozen=True)
class SmokeResult:
    ok: bool
    detail: str
    seconds: float
    output: str = ""  # the launcher's output, for the fix line when it failed


def parse_smoke(stdout: str, ranks: int) -> tuple[bool, str]:
    """Did every rank print the right all-reduce? (ok, what was seen)."""
    seen: dict[int, dict[str, object]] = {}
    for line in stdout.splitlines():
        start = line.find("{")
        if start < 0 or SMOKE_MARK not in line:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("rank"), int):
            seen[doc["rank"]] = doc
    want = [float(ranks * (ranks + 1) // 2)] * 4
    missing = [r for r in range(ranks) if r not in seen]
    if missing:
        return False, f"rank {', '.join(map(str, missing))} did not report"
    wrong = [r for r, d in seen.items() if d.get("size") != ranks or d.get("sum") != want]
    if wrong:
        return False, f"rank {', '.join(map(str, sorted(wrong)))} computed a wrong all-reduce"
    return True, f"all-reduce across {ranks} ranks agreed"


def starting_port(cluster: ClusterSettings) -> int:
    """mlx.launch's default between real hosts; when every rank is on this machine (tests, one
    Mac), free ports here, so parallel runs do not collide."""
    return free_ports([h.address or "" for h in cluster.hosts.values()])


def run_smoke(
    cluster: ClusterSettings, work_dir: Path, port: int, timeout: float = SMOKE_TIMEOUT_S
) -> SmokeResult:
    """Run the smoke all-reduce with mlx.launch; never raises for a failed run."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "hostfile.json"
    path.write_text(json.dumps(hostfile(cluster), indent=2))
    argv = smoke_command(cluster, path, port)
    ranks = len(cluster.hosts)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=work_dir,  # holds no file named "sh" that mlx.launch could take for the script
            start_new_session=True,  # the launcher and its ranks, stopped together
        )
    except OSError as exc:
        return SmokeResult(False, f"cannot run {argv[0]}: {exc}", 0.0)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, _ = proc.communicate()
        seconds = time.monotonic() - started
        return SmokeResult(False, f"no result within {timeout:.0f} s", seconds, out)
    seconds = time.monotonic() - started
    ok, detail = parse_smoke(out, ranks)
    if not ok and proc.returncode:
        detail += f" (mlx.launch exited with {proc.returncode})"
    return SmokeResult(ok, detail, seconds, out)


def _stop_group(proc: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def hostfile_path(alias: str) -> Path:
    return settings.paths().group_file(alias, ".hostfile.json")


def write_hostfile(cluster: ClusterSettings, alias: str, names: list[str]) -> Path:
    """The hostfile mlx.launch will start `alias` with (its hosts, rank 0 first), written
    atomically; left alone when it already says this."""
    path = hostfile_path(alias)
    text = json.dumps(hostfile(cluster, names), indent=2) + "\n"
    if not (path.is_file() and path.read_text("utf-8") == text):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


# ---- a sharded alias served by a group of ranks (docs/cluster.md) -----------------------------


def group_command(
    hostfile_path: Path,
    port: int,
    pythons: list[str],
    engine_config: Path,
    group: dict[str, object],
) -> list[str]:
    """mlx.launch starting one rank per host: rank 0 the engine behind the gateway (its config
    file), the others following it (GROUP as JSON); `pythons` are shell paths, rank order."""
    follow = shlex.quote(json.dumps(group, separators=(",", ":")))
    cases = [f"0) exec {pythons[0]} -m local_ai.server.engine --config "
             f"{shlex.quote(str(engine_config))} ;;"]  # fmt: skip
    cases += [
        f"{rank}) exec {py} -m local_ai.server.engine --follow {follow} ;;"
        for rank, py in enumerate(pythons)
        if rank
    ]
    script = f'case "$MLX_RANK" in {" ".join(cases)} esac; echo "no rank $MLX_RANK" >&2; exit 64'
    return launch_argv(hostfile_path, port, script)


def free_ports(addresses: list[str]) -> int:
    """--starting-port for these rank addresses (see `starting_port`)."""
    if not addresses or not all(is_loopback(a) for a in addresses):
        return DEFAULT_PORT
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = int(sock.getsockname()[1])
        ranks = len(addresses)
        if first + ranks < 65536 and all(port_free("127.0.0.1", first + i) for i in range(ranks)):
            return first
    return DEFAULT_PORT


def exec_group(launch_file: Path) -> int:
    """Run mlx.launch for the group `launch_file` describes (written by the gateway: hostfile,
    engine config, pythons, addresses, GROUP) until it ends or the gateway is gone. The port is
    picked now, so a restarted group finds free ones."""
    doc = json.loads(launch_file.read_text("utf-8"))
    argv = group_command(
        Path(doc["hostfile"]),
        free_ports(list(doc["addresses"])),
        list(doc["pythons"]),
        Path(doc["engine_config"]),
        doc["group"],
    )
    return run_watched(argv, os.getppid())


PARENT_CHECK_S = 0.5


def run_watched(argv: list[str], parent: int) -> int:
    """Run `argv` in this process's session; when `parent` (the gateway) is gone, end the whole
    session: a gateway killed with -9 cannot stop its group, and a restarted one starts another.
    Its SIGTERM (the gateway stops the session) reaches the child too; this waits for it."""
    # A handler, not SIG_IGN: an ignored signal would stay ignored in mlx.launch after exec.
    signal.signal(signal.SIGTERM, lambda *_: None)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    while True:
        try:
            code = proc.wait(timeout=PARENT_CHECK_S)
            return code if code >= 0 else 128 - code
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            if os.getpgrp() != os.getpid():  # not a session of its own: only what it started
                proc.kill()
                return proc.wait()
            os.killpg(os.getpgrp(), signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            os.killpg(os.getpgrp(), signal.SIGKILL)  # this process included


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "group":
        return exec_group(Path(argv[1]))
    if argv[:1] == ["mlx"]:
        return quiet_mlx_launch(argv[1:])
    print(
        "usage: python -m local_ai.cluster.launch group LAUNCH_FILE | mlx MLX_LAUNCH_ARGS…",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
