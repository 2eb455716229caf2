"""Hashing files against what the hub said, and removing bad cache entries.

huggingface_hub checks sizes only; every byte local-ai serves is hashed here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from local_ai.manifest.source import SourceFile
from local_ai.util.failpoints import failpoint

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Hashes:
    size: int
    sha256: str
    git_oid: str | None  # None when not asked for (see hash_file)


def hash_file(path: Path, *, git_oid: bool = True) -> Hashes:
    """sha256 of `path`, and its git blob sha1 in the same pass when `git_oid`. Only small git
    files need the sha1 (LFS files come with a sha256), and it would double the hashing time."""
    failpoint("hash.file")  # (an apply with nothing to do never gets here)
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False) if git_oid else None
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    return Hashes(size, sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None)


def needs_git_oid(entry: SourceFile) -> bool:
    return entry.sha256 is None and entry.blob_id is not None


def mismatch(expected: SourceFile, got: Hashes) -> str | None:
    """Why `got` is not `expected`, or None when it is."""
    if got.size != expected.size:
        return f"size is {got.size} bytes, expected {expected.size}"
    if expected.sha256 is not None:
        if got.sha256 != expected.sha256:
            return f"sha256 is {got.sha256}, expected {expected.sha256}"
    elif expected.blob_id is not None:
        if got.git_oid is None:
            raise ValueError(f"{expected.name}: hashed without its git blob id")
        if got.git_oid != expected.blob_id:
            return f"git blob id is {got.git_oid}, expected {expected.blob_id}"
    return None


def discard(pointer: Path) -> None:
    """Remove a snapshot entry and the blob it points to, blob first: the client would reuse a
    bad blob it finds by name, while a dangling pointer just reads as missing."""
    with contextlib.suppress(OSError):
        target = Path(os.path.realpath(pointer))
        if target != pointer:
            target.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        pointer.unlink(missing_ok=True)


def verify_tree(root: Path, files: list[SourceFile]) -> list[str]:
    """Re-hash every file of `files` under `root` (no cached hashes); one line per problem."""
    problems: list[str] = []
    for entry in files:
        path = root / entry.name
        if not path.is_file():
            problems.append(f"{entry.name}: missing")
            continue
        if entry.sha256 is None and entry.blob_id is None:
            continue
        problem = mismatch(entry, hash_file(path, git_oid=needs_git_oid(entry)))
        if problem is not None:
            problems.append(f"{entry.name}: {problem}")
    return problems
