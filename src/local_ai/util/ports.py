"""Is a TCP port free, and if not, who holds it?"""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class PortHolder:
    pid: int | None
    name: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "another process"
        return f"{self.name or 'process'} (pid {self.pid})"


def port_free(host: str, port: int) -> bool:
    """True when `port` can be bound on `host` and on the wildcard address (a listener on
    0.0.0.0 also takes the port from 127.0.0.1 on macOS)."""
    hosts = {host, "0.0.0.0"} if ":" not in host else {host, "::"}  # noqa: S104 (probe only)
    for addr in hosts:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if sys.platform == "linux":
                # Linux refuses the bind while anything listens even with SO_REUSEADDR, which
                # only lets us ignore TIME_WAIT leftovers of a server that just stopped.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((addr, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                if exc.errno == errno.EADDRNOTAVAIL:
                    continue
                raise
    return True


def port_holder(port: int) -> PortHolder | None:
    """The listening process on `port`, when the OS lets us see it."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return PortHolder(conn.pid, _process_name(conn.pid))
    except (psutil.AccessDenied, PermissionError):
        return _lsof_holder(port)
    return None


def _process_name(pid: int | None) -> str | None:
    if pid is None:
        return None
    import psutil

    try:
        return str(psutil.Process(pid).name())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _lsof_holder(port: int) -> PortHolder | None:
    """macOS restricts net_connections to root; lsof shows the user's own listeners."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
        return parse_lsof(out)
    return None


def parse_lsof(output: str) -> PortHolder | None:
    pid = name = None
    for line in output.splitlines():
        if line.startswith("p") and pid is None:
            pid = int(line[1:])
        elif line.startswith("c") and name is None:
            name = line[1:]
    return PortHolder(pid, name) if pid is not None else None
