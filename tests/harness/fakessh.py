"""A stand-in for the `ssh` client: it runs the remote command on this machine.

It replaces the network only. Everything local-ai does around ssh (the argv it builds, the
script on stdin, the exit codes it reads) goes through it unchanged. Destinations ending in
`.unreachable` fail the way ssh fails to connect: a message on stderr and exit code 255.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_SCRIPT = r"""#!/bin/sh
# fake ssh: skip options, take the destination, run the rest here
log="$FAKE_SSH_LOG"
[ -n "$log" ] && printf '%s\n' "$*" >> "$log"
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
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
exec /bin/sh -c "$*"
"""


def install_fake_ssh(directory: Path) -> Path:
    """Write `ssh` into `directory` (put it first on PATH); returns the log file it appends
    each invocation's arguments to when FAKE_SSH_LOG points there."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ssh"
    path.write_text(_SCRIPT)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory / "ssh.log"


def path_with(directory: Path) -> str:
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"
