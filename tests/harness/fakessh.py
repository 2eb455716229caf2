"""A stand-in for the `ssh` client: it runs the remote command on this machine.

It replaces the network only. Everything local-ai does around ssh (the argv it builds, the
script on stdin, the exit codes it reads) goes through it unchanged. Destinations ending in
`.unreachable` fail the way ssh fails to connect: a message on stderr and exit code 255.
With `-t`/`-tt` (mlx.launch asks for a terminal) there is no real one here, so `stty` is a
no-op for that command, as it would succeed on ssh's pseudo-terminal.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

_SCRIPT = r"""#!/bin/bash
# fake ssh: skip options, take the destination, run the rest here
log="$FAKE_SSH_LOG"
[ -n "$log" ] && printf '%s\n' "$*" >> "$log"
tty=""
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    -t|-tt) tty=1; shift ;;
    -o|-p|-i|-l|-F|-J) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
dest="$1"; shift
case "$dest" in
  *.unreachable)
    echo "ssh: connect to host $dest port 22: Connection refused" >&2
    exit 255 ;;
esac
[ -n "$tty" ] && PATH="$(dirname "$0")/tty:$PATH"
exec /bin/bash -c "$*"  # a login shell, as sshd would start
"""


def install_fake_ssh(directory: Path) -> Path:
    """Write `ssh` into `directory` (put it first on PATH); returns the log file it appends
    each invocation's arguments to when FAKE_SSH_LOG points there."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ssh"
    path.write_text(_SCRIPT)
    stty = directory / "tty" / "stty"
    stty.parent.mkdir(exist_ok=True)
    stty.write_text("#!/bin/sh\nexit 0\n")
    for script in (path, stty):
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory / "ssh.log"


def path_with(directory: Path) -> str:
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


def two_hosts(home_b: Path, extra: str = "") -> str:
    """A [cluster] of this machine (rank 0, "a") and "b", reached as me@b.local with its own
    local-ai home; both on 127.0.0.1 for the ring backend. `extra` is appended to host b."""
    return f"""
[cluster]
rank0 = "a"
[cluster.hosts.a]
address = "127.0.0.1"
[cluster.hosts.b]
ssh = "me@b.local"
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
