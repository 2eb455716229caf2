"""Crash-safe file writes: write aside in the same directory, fsync, rename into place.

The file written aside is `.<name>.<pid>.<random>.tmp`: a process killed before its rename leaves
one behind, which the next write of the same file (or `clean_stale_temps`) removes once that pid
is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path

from local_ai.errors import DiskSpaceError, is_disk_full
from local_ai.util.failpoints import failpoint

_TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(directory: Path, name: str | None = None) -> list[Path]:
    """Temp files of atomic writes in `directory` (of the file `name`, or of any) whose writer
    is gone: what a write killed before its rename leaves."""
    pattern = f".{glob.escape(name)}.*{_TMP_SUFFIX}" if name else f".*{_TMP_SUFFIX}"
    stale = []
    try:
        candidates = sorted(directory.glob(pattern))
    except OSError:
        return []
    for path in candidates:
        pid = path.name.removesuffix(_TMP_SUFFIX).rsplit(".", 2)
        if len(pid) == 3 and pid[1].isdigit() and not pid_alive(int(pid[1])):
            stale.append(path)
    return stale


def clean_stale_temps(directory: Path, name: str | None = None) -> list[Path]:
    removed = []
    for path in stale_temps(directory, name):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=path.parent
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            tmp.chmod(mode)
        elif path.exists():
            tmp.chmod(path.stat().st_mode & 0o7777)
        else:
            tmp.chmod(0o644)
        failpoint(f"atomic:{path.name}")  # written aside, not yet in place
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if is_disk_full(exc):
            raise DiskSpaceError.no_space(path.parent, f"writing {path.name}") from exc
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
