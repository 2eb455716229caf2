"""A real OpenSSH server on 127.0.0.1 for the cluster tests: this machine plays every "host".

One `sshd -D -e` per test process (started on first use, stopped at exit) runs as the current
user on a free port, with a host key and a client key generated in a temp dir. `install_ssh`
writes an `ssh` wrapper that execs the real client with a generated config (`-F`: OpenSSH reads
~/.ssh/config from the passwd home, not $HOME, which the tests change), so local-ai and
mlx.launch reach the hosts with the ssh from PATH:

- `b`, `c` and any `*.local` name (as `user@name` too, with this machine's user) reach the sshd;
- `*.unreachable` names go to a closed port on 127.0.0.1: a real "Connection refused", exit 255.

`set_reachable(directory, False)` rewrites that wrapper so every host is down the same way
(a host that goes away after apply), and `True` brings them back.

Calls share one connection (ControlMaster), as many people set up: 0.05 s a call instead of 0.3
on 2 busy cores, each a real session on the sshd.

A far session starts with sshd's clean environment and HOME set to a directory of the harness,
so a host without `home = ...` in the manifest keeps its local-ai home there, not in the real one.
When sshd cannot run, tests that need it fail if LOCAL_AI_REQUIRE_SSHD is set (.ci/run sets it)
and are skipped with the reason otherwise.
"""

from __future__ import annotations

import atexit
import getpass
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = getpass.getuser()
HOST_B = f"{USER}@b.local"  # host b of two_hosts(): user@name, the form people write
START_TIMEOUT_S = 30.0


@dataclass
class Sshd:
    """A running sshd and the client config that reaches it."""

    directory: Path
    port: int
    refused_port: int  # bound, never listening: connections to it are refused
    config: Path  # the client's -F file
    process: subprocess.Popen[bytes]
    _closed: socket.socket

    def refused(self) -> str:
        """ssh's stderr line for an `*.unreachable` host."""
        return f"ssh: connect to host 127.0.0.1 port {self.refused_port}: Connection refused"

    def stop(self) -> None:
        # The connection that later ssh calls share outlives sshd's listener: end it first.
        subprocess.run(
            [_client(), "-F", str(self.config), "-O", "exit", "b"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._closed.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class SshdUnavailable(Exception):
    """sshd could not be started here (not installed, or refused to run)."""


_server: Sshd | None = None
_failure: str | None = None


def server() -> Sshd:
    """This process's sshd, started on first use; fails or skips the calling test without it."""
    global _server, _failure
    if _server is None and _failure is None:
        try:
            _server = _start()
            atexit.register(_server.stop)
        except SshdUnavailable as exc:
            _failure = str(exc)
    if _server is not None:
        return _server
    assert _failure is not None
    if os.environ.get("LOCAL_AI_REQUIRE_SSHD"):
        pytest.fail(f"LOCAL_AI_REQUIRE_SSHD is set but {_failure}", pytrace=False)
    pytest.skip(_failure)


def install_ssh(directory: Path) -> Path:
    """Write the `ssh` wrapper into `directory` (put it first on PATH: `path_with`); returns the
    file it appends each invocation's arguments to, as local-ai or mlx.launch gave them."""
    return set_reachable(directory, True)


def set_reachable(directory: Path, reachable: bool) -> Path:
    """(Re)write the `ssh` wrapper in `directory`; with `reachable` False every host it reaches
    is down: a new connection (none shared) to the closed port, refused as by a Mac turned off."""
    sshd = server()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "ssh.log"
    down = "" if reachable else f" -o ControlPath=none -p {sshd.refused_port}"
    written = (
        directory / "ssh.new"
    )  # renamed into place: an ssh started meanwhile reads a whole one
    written.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> '{log}'\n"
        f"exec '{_client()}' -F '{sshd.config}'{down} \"$@\"\n"
    )
    written.chmod(written.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    written.replace(directory / "ssh")
    return log


def path_with(directory: Path) -> str:
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


def two_hosts(home_b: Path, extra: str = "") -> str:
    """A [cluster] of this machine (rank 0, "a") and "b", reached over ssh as HOST_B with its own
    local-ai home; both on 127.0.0.1 for the ring backend. `extra` is appended to host b."""
    return f"""
[cluster]
rank0 = "a"
[cluster.hosts.a]
address = "127.0.0.1"
[cluster.hosts.b]
ssh = "{HOST_B}"
address = "127.0.0.1"
python = "{sys.executable}"
home = "{home_b}"
{extra}
"""


def sharded_tiny(model: Path, home_b: Path, extra: str = "") -> str:
    """A manifest placing the tiny model at `model` on hosts a and b as a pipeline, with no
    server autostart and no benchmark; `extra` is appended (more models)."""
    return (
        two_hosts(home_b)
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
        + extra
    )


# ---- starting sshd ----------------------------------------------------------------------------


def _sshd_binary() -> str:
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate  # absolute: sshd refuses to re-exec itself otherwise
    raise SshdUnavailable("sshd is not installed (Debian: apt-get install openssh-server)")


def _client() -> str:
    # The system's ssh, never a wrapper on PATH (that would call itself).
    found = shutil.which("ssh", path=os.defpath)
    if not found:
        raise SshdUnavailable("the ssh client is not installed (apt-get install openssh-client)")
    return found


def _keygen(path: Path) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "local-ai-tests", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SshdUnavailable(f"ssh-keygen failed: {done.stderr.strip()}")
    return path.with_suffix(".pub").read_text().strip()


def _bound_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _privsep_dir() -> None:
    # Run as root, sshd needs its privilege-separation directory (Debian's service creates it).
    if os.geteuid() == 0:
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as exc:
            raise SshdUnavailable(f"cannot create /run/sshd for sshd: {exc}") from exc


def _die_with_parent() -> Callable[[], None] | None:
    """For the child: a crashed test process must not leave its sshd listening. Looked up
    before the fork, so the child only makes the call."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start() -> Sshd:
    sshd = _sshd_binary()
    client = _client()
    _privsep_dir()
    directory = Path(tempfile.mkdtemp(prefix="local-ai-sshd-"))
    try:
        return _start_in(directory, sshd, client)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _start_in(directory: Path, sshd: str, client: str) -> Sshd:
    host_pub = _keygen(directory / "host_ed25519")
    (directory / "authorized_keys").write_text(_keygen(directory / "client_ed25519") + "\n")
    far_home = directory / "far-user-home"
    far_home.mkdir()
    closed = _bound_port()  # held, not listening, for the session
    for _attempt in range(5):  # the free port may be taken between probe and bind
        probe = _bound_port()
        port = probe.getsockname()[1]
        probe.close()
        server_config = directory / "sshd_config"
        server_config.write_text(
            f"""ListenAddress 127.0.0.1:{port}
HostKey {directory / "host_ed25519"}
PidFile none
AuthorizedKeysFile {directory / "authorized_keys"}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100
MaxSessions 100
SetEnv HOME={far_home}
"""
        )
        log = directory / "sshd.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(server_config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent(),
            )
        if _listening(port, process):
            break
        if process.poll() is None:
            process.kill()
        process.wait()
        if "Address already in use" not in log.read_text(errors="replace"):
            closed.close()
            raise SshdUnavailable(f"sshd did not start: {_tail(log)}")
    else:
        closed.close()
        raise SshdUnavailable(f"sshd found no free port: {_tail(log)}")

    (directory / "known_hosts").write_text(f"local-ai-test-sshd {host_pub}\n")
    config = directory / "ssh_config"
    config.write_text(
        f"""Host *.unreachable
  HostName 127.0.0.1
  Port {closed.getsockname()[1]}

Host b c *.local
  HostName 127.0.0.1
  Port {port}
  HostKeyAlias local-ai-test-sshd
  ControlMaster auto
  ControlPath {directory}/mux-%C
  ControlPersist 30

Host *
  IdentityFile {directory / "client_ed25519"}
  IdentitiesOnly yes
  UserKnownHostsFile {directory / "known_hosts"}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  BatchMode yes
  LogLevel ERROR
  KexAlgorithms curve25519-sha256
"""
    )
    server = Sshd(directory, port, closed.getsockname()[1], config, process, closed)
    check = subprocess.run(
        [client, "-F", str(config), HOST_B, "true"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if check.returncode != 0:
        server.stop()
        raise SshdUnavailable(
            f"ssh to the test sshd failed ({check.stderr.strip()}); sshd log: {_tail(log)}"
        )
    return server


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-5:]) or "(no output)"
