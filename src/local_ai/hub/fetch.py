"""Fetch a resolved source into the user's HuggingFace cache, then verify every byte.

Downloads go through `huggingface_hub.hf_hub_download` (one call per file, pinned to the resolved
commit), so files already in the cache are reused and gated repos work with the user's token.
local-ai adds what the client does not do: a free-disk preflight, bounded retries of dropped
connections, sha256 verification (a bad blob is deleted), and progress for people.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local_ai import settings
from local_ai.errors import (
    DiskSpaceError,
    IntegrityError,
    LocalAIError,
    NotFoundError,
    OfflineError,
    UnsafeInputError,
    is_disk_full,
)
from local_ai.hub import client
from local_ai.hub.filters import check_names
from local_ai.hub.progress import FetchProgress, NullProgress, tqdm_bridge
from local_ai.hub.resolve import repo_cache_dir
from local_ai.hub.verify import Hashes, discard, hash_file, mismatch, needs_git_oid
from local_ai.manifest.models import REPO_PATTERN
from local_ai.manifest.source import GIT_OID_RE, ResolvedSource, SourceFile
from local_ai.util.atomic import atomic_write_text
from local_ai.util.failpoints import failpoint
from local_ai.util.units import human_bytes

if TYPE_CHECKING:
    pass

DEFAULT_WORKERS = 4
_VERIFIED_VERSION = 1


@dataclass(frozen=True)
class FetchedFile:
    name: str
    size: int
    sha256: str
    transferred: bool  # downloaded by this fetch (False: it was already in the cache)


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the snapshot directory (repo), or the local directory or .gguf file (path)
    files: tuple[FetchedFile, ...]
    cleaned: tuple[Path, ...] = ()  # leftovers of killed downloads removed first

    @property
    def downloaded_bytes(self) -> int:
        return sum(f.size for f in self.files if f.transferred)

    @property
    def reused_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.transferred)

    def sha256s(self) -> dict[str, str]:
        return {f.name: f.sha256 for f in self.files}


def fetch(
    resolved: ResolvedSource,
    *,
    progress: FetchProgress | None = None,
    offline: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> FetchResult:
    """Make every file of `resolved` present and verified; return where they are.

    Raises OfflineError (offline and files missing), DiskSpaceError (preflight), IntegrityError
    (a hash mismatch: the bad copy is deleted), UnavailableError (network, after retries),
    NotFoundError / AccessDeniedError (repo, revision or file gone; no access).
    """
    if resolved.kind == "path":
        return _fetch_local(resolved)
    repo, commit = _identity(resolved)
    check_names((f.name for f in resolved.files), repo=repo)
    offline = offline or settings.hf_offline()
    storage = repo_cache_dir(repo)
    snapshot = storage / "snapshots" / commit
    cleaned = tuple(clean_incomplete(storage))

    missing = [f for f in resolved.files if not (snapshot / f.name).exists()]
    to_transfer = [f for f in missing if not _blob_cached(storage, f)]
    if offline and missing:
        names = ", ".join(f.name for f in missing[:8]) + (" …" if len(missing) > 8 else "")
        raise OfflineError(
            f"{len(missing)} file(s) of {repo}@{commit[:12]} are not in the HuggingFace cache "
            f"and offline mode is on: {names}",
            hint="fetch them once with the network (unset HF_HUB_OFFLINE and run `local-ai "
            "apply`); `local-ai plan --offline` shows what can be done without it",
        )
    preflight(storage, sum(f.size for f in to_transfer), what=f"{repo}@{commit[:12]}")

    sink = progress or NullProgress()
    hashes = VerifiedHashes.load(settings.paths().verified_hashes)
    transferring = {f.name for f in to_transfer}
    sink.begin(f"{repo}", [(f.name, f.size) for f in to_transfer])
    try:
        outcomes = _run_all(
            resolved.files,
            lambda f: _fetch_one(resolved, f, snapshot, hashes, sink, f.name in transferring),
            workers=workers,
        )
    finally:
        sink.end()
        hashes.save()
    try:
        return FetchResult(snapshot, _collect(outcomes, repo, commit), cleaned)
    except DiskSpaceError:
        clean_incomplete(storage)  # never resumed: give the space back now
        raise


def missing_from_cache(resolved: ResolvedSource) -> tuple[SourceFile, ...]:
    """The files of `resolved` that are not on disk with their resolved size: in the HF cache
    snapshot of its commit (repos) or under its path. No network and no hashing (`fetch`
    verifies hashes), so planners can call it for every model."""
    if resolved.kind == "path":
        root = Path(resolved.path or "")
        base = root.parent if root.is_file() else root
    else:
        repo, commit = _identity(resolved)
        base = repo_cache_dir(repo) / "snapshots" / commit
    return tuple(f for f in resolved.files if not _has_size(base / f.name, f.size))


def is_cached(resolved: ResolvedSource) -> bool:
    """Every file of `resolved` is on disk (see `missing_from_cache`)."""
    return not missing_from_cache(resolved)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _identity(resolved: ResolvedSource) -> tuple[str, str]:
    # Both end up in file system paths: never trust them, even from our own lock file.
    repo, commit = resolved.repo or "", resolved.commit or ""
    if not re.match(REPO_PATTERN, repo) or ".." in repo:
        raise UnsafeInputError(f"{repo!r} is not a valid HuggingFace repo id")
    if not GIT_OID_RE.match(commit):
        raise UnsafeInputError(
            f"{commit!r} is not a full commit sha (40 hex digits) for {repo}",
            hint="run `local-ai lock` to resolve the revision again",
        )
    return repo, commit


def _blob_cached(storage: Path, entry: SourceFile) -> bool:
    """The content is already in the cache under another commit (blobs are named by etag)."""
    return any(
        (storage / "blobs" / etag).is_file() for etag in (entry.sha256, entry.blob_id) if etag
    )


def _fetch_one(
    resolved: ResolvedSource,
    entry: SourceFile,
    snapshot: Path,
    hashes: VerifiedHashes,
    sink: FetchProgress,
    transfer: bool,
) -> FetchedFile:
    pointer = snapshot / entry.name
    if not pointer.exists():
        pointer = _download(resolved, entry, sink)
        failpoint("fetch.file-done")  # in the cache, not yet verified
    got = hashes.of(pointer, git_oid=needs_git_oid(entry))
    failpoint("fetch.file-checked")  # hashed (fetch), or checked again (the verify action)
    problem = mismatch(entry, got)
    if problem is not None:
        hashes.forget(pointer)
        discard(pointer)
        raise _BadFile(entry.name, problem)
    sink.file_done(entry.name)
    return FetchedFile(entry.name, got.size, got.sha256, transfer)


def _download(resolved: ResolvedSource, entry: SourceFile, sink: FetchProgress) -> Path:
    from huggingface_hub import hf_hub_download

    assert resolved.repo is not None and resolved.commit is not None
    repo, commit = resolved.repo, resolved.commit

    def attempt() -> str:
        bridge, forwarded = tqdm_bridge(sink, entry.name)
        try:
            return hf_hub_download(
                repo,
                entry.name,
                revision=commit,
                endpoint=client.endpoint(),
                cache_dir=client.cache_dir(),
                token=client.token(),
                tqdm_class=bridge,
            )
        except BaseException:
            sink.advance(entry.name, -forwarded())  # those bytes were thrown away
            raise

    where = client.Where(repo, commit, file=entry.name, alias=resolved.alias)
    try:
        path = client.with_retries(
            attempt, where=where, what=f"downloading {entry.name} from {repo}"
        )
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskSpaceError.no_space(
            repo_cache_dir(repo),
            f"downloading {entry.name} from {repo}",
            hint="free up space, or move the HuggingFace cache to a larger disk (HF_HUB_CACHE "
            "or HF_HOME), and run the command again; the partial download was deleted",
        ) from exc
    return Path(path)


class _BadFile(Exception):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def _run_all(
    files: tuple[SourceFile, ...], job: Any, *, workers: int
) -> list[tuple[SourceFile, Future[FetchedFile]]]:
    if not files:
        return []
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(files))))
    try:
        futures = [(f, pool.submit(job, f)) for f in files]
        for _, future in futures:
            future.exception()  # wait; every file gets its chance even if another failed
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return futures


def _collect(
    outcomes: list[tuple[SourceFile, Future[FetchedFile]]], repo: str, commit: str
) -> tuple[FetchedFile, ...]:
    done: list[FetchedFile] = []
    bad: list[_BadFile] = []
    other: list[BaseException] = []
    for _entry, future in outcomes:
        exc = future.exception()
        if exc is None:
            done.append(future.result())
        elif isinstance(exc, _BadFile):
            bad.append(exc)
        else:
            other.append(exc)
    if bad:
        listing = "; ".join(str(b) for b in bad)
        raise IntegrityError(
            f"{len(bad)} file(s) of {repo}@{commit[:12]} do not match the hub's hashes and "
            f"were deleted from the cache: {listing}",
            hint="run the command again to download them afresh; if it fails again, the hub "
            "serves content that differs from what it published (check HF_ENDPOINT)",
        )
    if other:
        first = other[0]
        if not isinstance(first, LocalAIError):
            raise first
        if len(other) > 1 and first.hint is None:
            first.hint = f"{len(other)} files failed; finished files are kept for the next run"
        raise first
    return tuple(sorted(done, key=lambda f: f.name))


# ---- preflight ------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    """Free space on the file system holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def preflight(directory: Path, needed: int, *, what: str) -> None:
    """Refuse to start a download that cannot fit, naming the directory and the shortfall."""
    if needed <= 0:
        return
    free = free_bytes(directory)
    if needed > free:
        raise DiskSpaceError(
            f"not enough free disk space in {directory} to fetch {what}: "
            f"{human_bytes(needed)} needed, {human_bytes(free)} free "
            f"({human_bytes(needed - free)} missing)",
            hint="free up space, or move the HuggingFace cache to a larger disk "
            "(HF_HUB_CACHE or HF_HOME)",
        )


# ---- local sources --------------------------------------------------------------------------


def _fetch_local(resolved: ResolvedSource) -> FetchResult:
    """Nothing to download: check the files are there and hash them (recorded for the lock)."""
    assert resolved.path is not None
    root = Path(resolved.path)
    base = root.parent if root.is_file() else root
    hashes = VerifiedHashes.load(settings.paths().verified_hashes)
    out: list[FetchedFile] = []
    try:
        for entry in resolved.files:
            path = base / entry.name
            if not path.is_file():
                raise NotFoundError(
                    f"{path} is missing", hint=f"check models.{resolved.alias}.path"
                )
            got = hashes.of(path)
            if entry.sha256 is not None and got.sha256 != entry.sha256:
                raise IntegrityError(
                    f"{path} changed since it was locked (sha256 {got.sha256[:12]}…, locked "
                    f"{entry.sha256[:12]}…)",
                    hint="run `local-ai lock --upgrade " + resolved.alias + "` to accept it",
                )
            out.append(FetchedFile(entry.name, got.size, got.sha256, False))
    finally:
        hashes.save()
    return FetchResult(root, tuple(out))


# ---- leftovers of killed downloads ----------------------------------------------------------


def incomplete_leftovers(cache: Path | None = None) -> list[Path]:
    """`*.incomplete` blobs in the HF cache that no download is writing (its lock is free):
    what a killed run leaves. huggingface_hub never resumes them, so they are pure waste."""
    cache = cache or client.cache_dir()
    found: list[Path] = []
    if not cache.is_dir():
        return found
    for storage in sorted(cache.glob("models--*")):
        found += _stale_incomplete(storage)
    return found


def clean_incomplete(storage: Path) -> list[Path]:
    """Remove the stale `*.incomplete` files of one repo's cache folder; return them."""
    stale = _stale_incomplete(storage)
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale


def _stale_incomplete(storage: Path) -> list[Path]:
    from filelock import FileLock, Timeout

    blobs = storage / "blobs"
    if not blobs.is_dir():
        return []
    stale: list[Path] = []
    for path in sorted(blobs.glob("*.incomplete")):
        etag = path.name.split(".", 1)[0]
        lock_file = storage.parent / ".locks" / storage.name / f"{etag}.lock"
        if not lock_file.exists():
            stale.append(path)
            continue
        lock = FileLock(str(lock_file), timeout=0, mode=0o664)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue  # a download is writing it right now
        try:
            stale.append(path)
        finally:
            lock.release()
    return stale


# ---- verified hashes ------------------------------------------------------------------------


class VerifiedHashes:
    """Hashes of cache blobs, keyed by real path and valid while size, mtime and inode are
    unchanged, so fetching a model already verified costs no re-hash. `models verify` ignores
    this and hashes everything."""

    def __init__(self, path: Path, data: dict[str, dict[str, Any]]) -> None:
        import threading

        self.path = path
        self._data = data
        self._dirty = False
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> VerifiedHashes:
        try:
            raw = json.loads(path.read_text("utf-8"))
            data = raw["files"] if raw.get("version") == _VERIFIED_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            data = {}
        return cls(path, data if isinstance(data, dict) else {})

    def of(self, file: Path, *, git_oid: bool = False) -> Hashes:
        real = os.path.realpath(file)
        stat = Path(real).stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        with self._lock:
            record = self._data.get(real)
        if isinstance(record, dict) and record.get("stamp") == stamp:
            oid = record.get("git_oid")
            if isinstance(record.get("sha256"), str) and (isinstance(oid, str) or not git_oid):
                return Hashes(stat.st_size, record["sha256"], oid if isinstance(oid, str) else None)
        hashes = hash_file(Path(real), git_oid=git_oid)
        with self._lock:
            self._data[real] = {"stamp": stamp, "sha256": hashes.sha256, "git_oid": hashes.git_oid}
            self._dirty = True
        return hashes

    def forget(self, file: Path) -> None:
        with self._lock:
            self._dirty = self._data.pop(os.path.realpath(file), None) is not None or self._dirty

    def save(self) -> None:
        if not self._dirty:
            return
        with self._lock:
            live = {k: v for k, v in self._data.items() if Path(k).exists()}
        text = json.dumps({"version": _VERIFIED_VERSION, "files": live}, sort_keys=True)
        # A cache: losing it (to a full disk too) costs only a re-hash.
        with contextlib.suppress(OSError, DiskSpaceError):
            atomic_write_text(self.path, text)
        self._dirty = False
