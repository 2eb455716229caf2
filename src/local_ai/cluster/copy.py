"""Copy a store entry to a [cluster] host over ssh: resumable, verified there, renamed into place.

One ssh connection per copy runs ``python -m local_ai.cluster.copy receive`` under the host's
own local-ai (plan already requires the same version there). No rsync: this machine has none,
and macOS 15+ ships openrsync, whose resume options differ. The protocol on that connection:

1. receiver → one JSON line: ``{"present": true}`` (the entry is in its store) or
   ``{"have": {name: bytes}}``, what ``incoming/<entry>/`` holds from an earlier copy;
2. sender → a JSON line listing every file with its size and sha256 and the provenance, then
   per file still short ``{"name", "offset"}`` and the bytes from ``offset`` on, then ``{"end"}``;
3. receiver → ``{"ok": true}`` once every file matched its sha256 and ``incoming/<entry>/``
   was renamed to ``store/<entry>/``, or ``{"ok": false, "bad": [...]}`` (those files are
   deleted, so the next copy sends them again).

``incoming/`` is not ``staging/``: a local-ai on that host cleans staging dirs of dead
processes, which would throw away a copy that is meant to be resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from local_ai import settings
from local_ai.errors import IntegrityError, LocalAIError, UnavailableError
from local_ai.store.holds import incoming_lock, release_hold, write_hold
from local_ai.store.layout import PROVENANCE_FILE, safe_name
from local_ai.util.atomic import atomic_write_text, fsync_dir
from local_ai.util.failpoints import failpoint

if TYPE_CHECKING:
    from local_ai.hub.progress import FetchProgress
    from local_ai.manifest.models import ClusterHost
    from local_ai.store.state import InstalledModel

CHUNK = 4 << 20
_DIGEST_RE = re.compile(r"^[0-9a-f]{8,64}$")


class CopyError(LocalAIError):
    """A store entry could not be copied to a cluster host."""


@dataclass(frozen=True)
class EntryFile:
    name: str  # relative to the entry directory
    size: int
    sha256: str
    path: Path  # on this machine


@dataclass(frozen=True)
class LocalEntry:
    """What a host's store entry is made of: this machine's files and their hashes."""

    digest: str
    name: str
    files: tuple[EntryFile, ...]
    provenance: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class CopyResult:
    host: str
    present: bool  # the host had it already: nothing sent
    sent: int = 0
    resumed: int = 0  # bytes an earlier, interrupted copy had left there
    seconds: float = 0.0

    def describe(self) -> str:
        if self.present:
            return f"{self.host} already has it"
        text = f"{_size(self.sent)} sent to {self.host}, verified by sha256 there"
        if self.resumed:
            text += f" ({_size(self.resumed)} were there from an interrupted copy)"
        return text


def _size(n: int) -> str:
    return f"{n} B" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


# ---- this machine -----------------------------------------------------------------------------


def entry_name(model: InstalledModel) -> str:
    """The name part of the store entry `digest-name` an installed alias becomes on a host."""
    location = Path(model.location)
    if model.location_kind == "store":
        return location.name.partition("-")[2]
    return safe_name((model.source or location.name).split("@")[0].split("/")[-1])


def local_entry(model: InstalledModel, digest: str) -> LocalEntry:
    """The files an installed alias serves, with sha256s: as recorded at install where it was
    (HF and path sources), else hashed now (cached by size, mtime and inode)."""
    from local_ai.hub.fetch import VerifiedHashes

    location = Path(model.location)
    base = location.parent if location.is_file() else location
    name = entry_name(model)
    cache = VerifiedHashes.load(settings.paths().verified_hashes)
    files = []
    for rel, record in sorted(model.files.items()):
        path = base / rel
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CopyError(
                f"{model.alias}: {path} is gone ({exc.strerror})",
                hint="run `local-ai apply` again to reinstall it",
            ) from None
        if size != record.size:
            raise IntegrityError(
                f"{model.alias}: {path} has {size} bytes, {record.size} when installed",
                hint="run `local-ai models verify` and reinstall it",
            )
        sha = record.sha256 or cache.of(path, git_oid=False).sha256
        files.append(EntryFile(rel, size, sha, path))
    cache.save()
    provenance: dict[str, Any] = {}
    if (base / PROVENANCE_FILE).is_file():
        provenance = json.loads((base / PROVENANCE_FILE).read_text("utf-8"))
    return LocalEntry(
        digest,
        name,
        tuple(files),
        {
            "kind": "copy",
            "source": model.source,
            "commit": model.commit,
            "quantization": model.quantization,
            "original": provenance,  # the conversion's own record, when it was one
        },
    )


def host_command(host: ClusterHost, *args: str) -> list[str]:
    """ssh in batch mode running `python -m local_ai.cluster.copy ARGS` under the host's
    local-ai and LOCAL_AI_HOME."""
    from local_ai.cluster.observe import host_python, shell_path, ssh_to

    env = f"LOCAL_AI_HOME={shell_path(host.home)} " if host.home else ""
    remote = f"{env}exec {shell_path(host_python(host))} -m local_ai.cluster.copy " + " ".join(
        shlex.quote(a) for a in args
    )
    return [*ssh_to(str(host.ssh)), remote]


def receive_command(
    host: ClusterHost, entry: LocalEntry, hold: tuple[str, str] | None = None
) -> list[str]:
    """The receiver on that host; `hold`: (rank 0, alias) it records once the entry is there."""
    return host_command(host, "receive", entry.digest, entry.name, *(hold or ()))


def release_on_host(name: str, host: ClusterHost, entry: str, rank0: str, alias: str) -> bool:
    """Release rank 0's hold of store entry `entry` for `alias` on that host, over the same
    ssh path as the copy; whether there was one."""
    argv = host_command(host, "release", entry, rank0, alias)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnavailableError(f"cannot release the hold on {name}: {exc}") from None
    answer = _answer_text(done.stdout)
    if answer is None or not answer.get("ok"):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = (answer or {}).get("error") or (lines[-1] if lines else f"exit {done.returncode}")
        if done.returncode == 255:
            raise UnavailableError(
                f"cannot release the hold on {name}: ssh failed: {why}",
                hint=f"check that `ssh {host.ssh} true` works; the hold stays until an apply "
                "reaches it (or `local-ai gc --release-holds` run there)",
            )
        raise CopyError(f"{name} did not release the hold: {why}")
    return bool(answer.get("released"))


def copy_entry(
    name: str,
    host: ClusterHost,
    entry: LocalEntry,
    *,
    hold: tuple[str, str] | None = None,
    progress: FetchProgress | None = None,
) -> CopyResult:
    """Copy `entry` into `host`'s store (or find it there), held there for `hold` (rank 0,
    alias). Ctrl-C stops the copy; what was sent stays in the host's incoming/ for the next
    copy to continue."""
    started = time.monotonic()
    argv = receive_command(host, entry, hold)
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
            )
        except OSError as exc:
            raise UnavailableError(f"cannot run ssh: {exc}") from None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            first = _answer(proc.stdout)
            if first is None:
                raise _failed(name, host, proc, errors)
            if first.get("error"):
                raise CopyError(
                    f"{name} cannot take store entry {entry.digest}: {first['error']}",
                    hint="wait for the other apply to finish, then run `local-ai apply` again",
                )
            if first.get("present"):
                proc.stdin.close()
                proc.wait(timeout=30)
                return CopyResult(name, present=True)
            have = {str(k): int(v) for k, v in dict(first.get("have") or {}).items()}
            sent, resumed = _send(proc.stdin, entry, have, progress, f"to {name}")
            proc.stdin.close()
            last = _answer(proc.stdout)
            proc.wait()
        except BrokenPipeError:
            raise _failed(name, host, proc, errors) from None
        finally:
            _stop(proc)
        if last is None:
            raise _failed(name, host, proc, errors)
        if not last.get("ok"):
            bad = [f"{b['name']} (sha256 {b['got'][:12]}…, want {b['want'][:12]}…)"
                   for b in last.get("bad") or []]  # fmt: skip
            raise IntegrityError(
                f"{name} refused the copy of store entry {entry.digest}: "
                + (", ".join(bad) or str(last.get("error"))),
                hint="the mismatching files were deleted there; run `local-ai apply` again "
                "to send them anew (if it recurs, check the disk or memory of that host)",
            )
    return CopyResult(name, False, sent, resumed, time.monotonic() - started)


def _send(
    out: IO[bytes],
    entry: LocalEntry,
    have: dict[str, int],
    progress: FetchProgress | None,
    label: str,
) -> tuple[int, int]:
    listing = {
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in entry.files],
        "provenance": entry.provenance,
    }
    out.write(json.dumps(listing).encode() + b"\n")
    # Longer than it should be: start that file over.
    start = {f.name: o if (o := have.get(f.name, 0)) <= f.size else 0 for f in entry.files}
    if progress is not None:
        progress.begin(label, [(f.name, f.size - start[f.name]) for f in entry.files
                               if start[f.name] < f.size])  # fmt: skip
    try:
        sent, resumed = _send_files(out, entry, start, progress)
    finally:
        if progress is not None:
            progress.end()
    out.write(b'{"end": true}\n')
    out.flush()
    return sent, resumed


def _send_files(
    out: IO[bytes], entry: LocalEntry, start: dict[str, int], progress: FetchProgress | None
) -> tuple[int, int]:
    sent = resumed = 0
    for item in entry.files:
        offset = start[item.name]
        resumed += offset
        if offset == item.size:
            continue
        out.write(json.dumps({"name": item.name, "offset": offset}).encode() + b"\n")
        with item.path.open("rb") as handle:
            handle.seek(offset)
            left = item.size - offset
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    raise CopyError(f"{item.path} shrank while it was being copied")
                out.write(chunk)
                out.flush()  # on its way to the host, even if this process is killed next
                left -= len(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress.advance(item.name, len(chunk))
                failpoint("copy-to-host.chunk-sent")  # part of a file is on the host
        if progress is not None:
            progress.file_done(item.name)
    return sent, resumed


def _answer(stream: IO[bytes]) -> dict[str, Any] | None:
    return _json_object(stream.readline())


def _answer_text(text: str) -> dict[str, Any] | None:
    """The host's answer: the last line it printed."""
    lines = [line for line in text.splitlines() if line.strip()]
    return _json_object(lines[-1]) if lines else None


def _json_object(line: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the copy: EOF first, so the host keeps what reached it, then SIGTERM."""
    if proc.stdin is not None and not proc.stdin.closed:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _failed(
    name: str, host: ClusterHost, proc: subprocess.Popen[bytes], errors: IO[bytes]
) -> Exception:
    _stop(proc)
    errors.seek(0)
    lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit code {proc.returncode}"
    if proc.returncode == 255:
        return UnavailableError(
            f"cannot copy to {name}: ssh failed: {why}",
            hint=f"check that `ssh {host.ssh} true` works without a password",
        )
    return CopyError(
        f"the copy to {name} failed: {why}",
        hint="`local-ai doctor --cluster` checks the host and its local-ai; run `local-ai "
        "apply` again to continue the copy",
    )


# ---- the far host -----------------------------------------------------------------------------


def receive(
    digest: str,
    name: str,
    stdin: IO[bytes],
    stdout: IO[str],
    hold: tuple[str, str] | None = None,
) -> int:
    """The receiving end, run on the host by `copy_entry` (stdin: the sender's stream).
    `hold`: (rank 0, alias) to record as serving the entry once it is in place."""
    if not _DIGEST_RE.match(digest) or name != safe_name(name):
        print(json.dumps({"ok": False, "error": f"bad entry name {digest}-{name}"}), file=stdout)
        return 2
    paths = settings.paths()
    entry = f"{digest}-{name}"
    target = paths.store / entry
    incoming = paths.incoming
    with incoming_lock(paths, entry) as lock:
        if lock is None:
            busy = {"ok": False, "error": "another apply is copying it there now"}
            print(json.dumps(busy), file=stdout, flush=True)
            return 1
        if (target / PROVENANCE_FILE).is_file():
            if hold is not None:
                write_hold(paths, entry, *hold, how="found here by digest")
            print(json.dumps({"present": True}), file=stdout, flush=True)
            return 0
        partial = incoming / entry
        partial.mkdir(exist_ok=True)
        have = {
            str(p.relative_to(partial)): p.stat().st_size for p in partial.rglob("*") if p.is_file()
        }
        print(json.dumps({"have": have}), file=stdout, flush=True)
        listing = json.loads(stdin.readline())
        files = {f["name"]: f for f in listing["files"]}
        if any(Path(rel).is_absolute() or ".." in Path(rel).parts for rel in files):
            raise ValueError("a file name outside the entry")  # never from local-ai's sender
        for rel in set(have) - set(files):
            (partial / rel).unlink()  # not part of the entry
        hashes: dict[str, str] = {}
        while True:
            header = json.loads(stdin.readline() or "null")
            if header is None:
                return 1  # the sender stopped: what arrived stays, to be continued
            if header.get("end"):
                break
            rel = str(header["name"])
            if rel not in files:
                raise ValueError(f"unlisted file {rel}")
            hashes[rel] = _write(partial / rel, int(header["offset"]), files[rel]["size"], stdin)
        bad = []
        for rel, want in files.items():
            path = partial / rel
            got = hashes.get(rel) or (_sha256(path, None) if path.is_file() else "missing")
            if got != want["sha256"]:
                bad.append({"name": rel, "want": want["sha256"], "got": got})
                path.unlink(missing_ok=True)
        if bad:
            print(json.dumps({"ok": False, "bad": bad}), file=stdout, flush=True)
            return 1
        record = {
            **listing["provenance"],
            "digest": digest,
            "files": {rel: {"size": f["size"], "sha256": f["sha256"]} for rel, f in files.items()},
            "built_at": time.time(),
        }
        atomic_write_text(partial / PROVENANCE_FILE, json.dumps(record, indent=2, default=str))
        if hold is not None:  # before the rename: a gc there never sees it unheld
            write_hold(paths, entry, *hold, how="copied here")
        paths.store.mkdir(parents=True, exist_ok=True)
        partial.rename(target)
        fsync_dir(paths.store)
        print(json.dumps({"ok": True, "path": str(target)}), file=stdout, flush=True)
        return 0


def _write(path: Path, offset: int, size: int, stdin: IO[bytes]) -> str:
    """Continue `path` from `offset` with the bytes that follow; its sha256, prefix included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.truncate(offset)
    digest = hashlib.sha256()
    _sha256(path, digest)  # the part already here
    with path.open("ab") as handle:
        left = size - offset
        while left > 0:
            chunk = stdin.read(min(CHUNK, left))
            if not chunk:
                handle.flush()
                raise EOFError  # cut mid-file: keep what arrived
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _sha256(path: Path, digest: Any) -> str:
    digest = digest if digest is not None else hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return str(digest.hexdigest())


def release(entry: str, rank0: str, alias: str, stdout: IO[str]) -> int:
    """The host's end of a planned release-hold: drop rank 0's hold of `entry` for `alias`."""
    digest, _, name = entry.partition("-")
    if not _DIGEST_RE.match(digest) or not name or name != safe_name(name):
        print(json.dumps({"ok": False, "error": f"bad entry name {entry}"}), file=stdout)
        return 2
    released = release_hold(settings.paths(), entry, rank0, alias)
    print(json.dumps({"ok": True, "released": released}), file=stdout, flush=True)
    return 0


USAGE = (
    "usage: python -m local_ai.cluster.copy receive DIGEST NAME [RANK0 ALIAS]\n"
    "       python -m local_ai.cluster.copy release ENTRY RANK0 ALIAS"
)


def main(argv: list[str]) -> int:
    if argv[:1] == ["release"] and len(argv) == 4:
        return release(argv[1], argv[2], argv[3], sys.stdout)
    if argv[:1] != ["receive"] or len(argv) not in (3, 5):
        print(USAGE, file=sys.stderr)
        return 2
    hold = (argv[3], argv[4]) if len(argv) == 5 else None
    with contextlib.suppress(EOFError, BrokenPipeError, KeyboardInterrupt):
        return receive(argv[1], argv[2], sys.stdin.buffer, sys.stdout, hold)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
