"""A fake Hugging Face Hub: a real HTTP/1.1 server on 127.0.0.1 for the real huggingface_hub client.

Why: download, lock and search code must be exercised against the client's actual behaviour
(HEAD/GET headers, ETag-named blobs, Range resume, retries, error-code mapping) without the
network, and with network faults on demand. Everything is stdlib; fixture repos live in memory
(or are streamed from files on disk for benchmarks).

Endpoints (model repos only):

- ``GET /api/models`` (list_models, ``Link`` pagination)
- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (model_info / repo_info)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (list_repo_tree / list_repo_files)
- ``GET /api/models/{repo}/refs``, ``/commits/{rev}``, ``POST /paths-info/{rev}``
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (hf_hub_download, Range supported)

Point a client at it with ``endpoint=hub.url`` or ``HF_ENDPOINT=hub.url`` in a subprocess's
environment (huggingface_hub reads ``HF_ENDPOINT`` once, at import; see ``client_pointed_at``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import itertools
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args
from urllib.parse import parse_qs, unquote, urlencode, urlsplit


@dataclass(frozen=True)
class SizedFile:
    """A file that only looks big: listings, HEAD and metadata report ``size`` and the hub derives
    safetensors/GGUF info from ``head``; GET serves ``head`` then zeros. Its sha256 and git id
    are made up (hashing gigabytes of zeros would be slow), so a download fails verification:
    for search and sizing tests, not fetch tests."""

    size: int
    head: bytes = b""

    def __post_init__(self) -> None:
        if self.size < len(self.head):
            raise ValueError("SizedFile.size must be at least len(head)")


FileSource = bytes | str | Path | SizedFile
"""File content for ``add_repo``/``commit``: bytes, text (UTF-8 encoded), a file on disk, or a
``SizedFile`` (big in listings, never materialized)."""

FaultKind = Literal[
    "truncate",
    "flip_byte",
    "drop_connection",
    "ignore_range",
    "http_429",
    "http_500",
    "slow",
    "hostile_names",
    "wrong_size",
    "wrong_sha256",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
_LISTING_KINDS = frozenset(("hostile_names", "wrong_size", "wrong_sha256"))

HOSTILE_NAMES: tuple[str, ...] = ("../evil", "/etc/passwd", "a/%2e%2e/b", "..\\x")
HOSTILE_CONTENT = b"pwned\n"

DEFAULT_TOKEN = "hf_fakehub_valid_token"
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.gguf",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.npz",
    "*.npy",
    "*.tflite",
    "*.zip",
    "*.tar.gz",
)
LFS_THRESHOLD = 10 * 1024 * 1024  # the real hub refuses non-LFS files above 10 MiB
FAKE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_CHUNK = 64 * 1024
_API_SUBPATHS = frozenset(("revision", "tree", "refs", "commits", "paths-info", "resolve"))
_HEX40 = frozenset("0123456789abcdef")


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_blob_sha1_header(size: int) -> bytes:
    return f"blob {size}\0".encode()


# --------------------------------------------------------------------------------------------
# Content model
# --------------------------------------------------------------------------------------------


class Blob:
    """Immutable file content with its git blob sha1 and sha256, from bytes or a file on disk.

    Files on disk are hashed once and streamed per request, so benchmarks can serve big files
    without holding them in memory (they must not change afterwards).
    """

    __slots__ = ("_data", "_head", "_path", "git_sha1", "sha256", "size")

    def __init__(
        self, data: bytes | None = None, path: Path | None = None, sized: SizedFile | None = None
    ) -> None:
        if sum(x is not None for x in (data, path, sized)) != 1:
            raise ValueError("Blob needs exactly one of data, path or sized")
        self._data = data
        self._path = path
        self._head = sized.head if sized is not None else None
        sha256 = hashlib.sha256()
        if sized is not None:
            self.size = sized.size
            marker = f"sized:{sized.size}:".encode() + sized.head
            self.git_sha1 = hashlib.sha1(marker).hexdigest()
            self.sha256 = hashlib.sha256(marker).hexdigest()
            return
        if data is not None:
            self.size = len(data)
            sha1 = hashlib.sha1(_git_blob_sha1_header(self.size))
            sha1.update(data)
            sha256.update(data)
        else:
            assert path is not None
            self.size = path.stat().st_size
            sha1 = hashlib.sha1(_git_blob_sha1_header(self.size))
            with path.open("rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    sha1.update(chunk)
                    sha256.update(chunk)
        self.git_sha1 = sha1.hexdigest()
        self.sha256 = sha256.hexdigest()

    def open(self) -> BinaryIO:
        """A fresh binary stream over the content (a SizedFile: over its head only)."""
        if self._data is not None:
            return io.BytesIO(self._data)
        if self._head is not None:
            return io.BytesIO(self._head)
        assert self._path is not None
        return self._path.open("rb")

    def iter_range(self, start: int, stop: int) -> Iterator[bytes]:
        """Bytes ``[start, stop)`` in chunks."""
        if self._head is not None:
            head = self._head
            for pos in range(start, stop, _CHUNK):
                end = min(stop, pos + _CHUNK)
                part = head[pos:end] if pos < len(head) else b""
                yield part + bytes(end - pos - len(part))
            return
        if self._data is not None:
            for pos in range(start, stop, _CHUNK):
                yield self._data[pos : min(stop, pos + _CHUNK)]
            return
        with self.open() as fh:
            fh.seek(start)
            remaining = stop - start
            while remaining > 0:
                chunk = fh.read(min(_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def read(self) -> bytes:
        with self.open() as fh:
            return fh.read()


def _as_blob(source: FileSource) -> Blob:
    if isinstance(source, bytes):
        return Blob(data=source)
    if isinstance(source, str):
        return Blob(data=source.encode())
    if isinstance(source, SizedFile):
        return Blob(sized=source)
    return Blob(path=Path(source))


@dataclass(frozen=True)
class RepoEntry:
    """One file of a commit: its path, its content and whether the hub stores it in LFS."""

    path: str
    blob: Blob
    lfs: bool

    @property
    def pointer(self) -> bytes:
        """The git-lfs pointer file the git tree really holds for an LFS file."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.blob.sha256}\n"
            f"size {self.blob.size}\n"
        ).encode()

    @property
    def oid(self) -> str:
        """Git blob id as the hub reports it (the pointer's blob id for LFS files)."""
        if not self.lfs:
            return self.blob.git_sha1
        pointer = self.pointer
        return hashlib.sha1(_git_blob_sha1_header(len(pointer)) + pointer).hexdigest()


def _entries(
    lfs_patterns: tuple[str, ...], files: Mapping[str, FileSource]
) -> dict[str, RepoEntry]:
    """Hash ``files`` and decide LFS storage the way the hub's .gitattributes + size rule do."""
    out: dict[str, RepoEntry] = {}
    for name, source in files.items():
        blob = _as_blob(source)
        base = name.rsplit("/", 1)[-1]
        lfs = blob.size > LFS_THRESHOLD or any(
            fnmatch.fnmatchcase(name if "/" in pat else base, pat) for pat in lfs_patterns
        )
        out[name] = RepoEntry(path=name, blob=blob, lfs=lfs)
    return out


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: Mapping[str, RepoEntry]
    message: str
    date: datetime


@dataclass
class FakeRepo:
    """State of one model repo; mutate it through ``FakeHub`` methods (they take the lock)."""

    repo_id: str
    lfs_patterns: tuple[str, ...]
    gated: Literal[False, "auto", "manual"]
    private: bool
    allowed_tokens: frozenset[str] | None
    metadata: dict[str, Any]
    created_at: datetime
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """Branch, tag, full commit sha or a unique sha prefix (>= 7 chars) -> commit."""
        for refs in (self.branches, self.tags):
            if revision in refs:
                return self.commits[refs[revision]]
        for prefix in ("refs/heads/", "refs/tags/"):
            if revision.startswith(prefix):
                name = revision[len(prefix) :]
                sha = (self.branches if "heads" in prefix else self.tags).get(name)
                return self.commits[sha] if sha else None
        if revision in self.commits:
            return self.commits[revision]
        if len(revision) >= 7 and set(revision) <= _HEX40:
            matches = [c for sha, c in self.commits.items() if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def history(self, commit: Commit) -> list[Commit]:
        out = [commit]
        while out[-1].parent is not None:
            out.append(self.commits[out[-1].parent])
        return out


# --------------------------------------------------------------------------------------------
# Faults and request log
# --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """A misbehaviour injected with ``FakeHub.inject``; see that method for each kind.

    ``times`` counts the requests the fault is applied to (``None``: every matching request,
    until ``clear_faults``); ``hits`` counts how often it was applied.
    """

    kind: FaultKind
    repo_id: str | None = None
    path: str | None = None
    methods: frozenset[str] | None = None
    target: Literal["any", "api", "file"] = "any"
    times: int | None = None
    at: int | None = None
    retry_after: int | None = 0
    bytes_per_second: int = 256 * 1024
    max_seconds: float = 2.0
    names: tuple[str, ...] = HOSTILE_NAMES
    delta: int = 1
    where: frozenset[str] = frozenset(("api", "head"))
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def offset_for(self, size: int) -> int:
        """Absolute byte offset the fault acts at (default: the middle of the file)."""
        return self.at if self.at is not None else size // 2


@dataclass
class RequestRecord:
    """One request as the server saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    kind: Literal["api", "file", "other"] = "other"
    repo_id: str | None = None
    file: str | None = None
    revision: str | None = None
    status: int = 0
    body_bytes: int = 0
    faults: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """A request header, looked up case-insensitively."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def range(self) -> str | None:
        return self.header("Range")


@dataclass
class _Ctx:
    method: str
    kind: Literal["api", "file", "other"]
    repo_id: str | None
    file: str | None
    has_range: bool = False


class _AbortConnection(Exception):
    """Raised inside a handler to end the connection without a further response."""


# --------------------------------------------------------------------------------------------
# Metadata derived from file contents (what the hub computes server side)
# --------------------------------------------------------------------------------------------


def _safetensors_parameters(blob: Blob) -> dict[str, int] | None:
    try:
        with blob.open() as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n <= 0 or n > 100_000_000 or n > blob.size - 8:
                return None
            header = json.loads(fh.read(n))
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    params: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        count = 1
        for dim in info.get("shape", []):
            count *= int(dim)
        dtype = str(info.get("dtype", "?"))
        params[dtype] = params.get(dtype, 0) + count
    return params or None


_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def _gguf_info(blob: Blob) -> dict[str, Any] | None:
    """``{total, architecture, context_length, ...}`` as the hub reports for a GGUF file."""

    def read(fh: BinaryIO, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = fh.read(size)
        if len(raw) != size:
            raise ValueError("short read")
        return struct.unpack(fmt, raw)[0]

    def read_str(fh: BinaryIO) -> str:
        n = read(fh, "<Q")
        if n > 1 << 24:
            raise ValueError("string too long")
        return fh.read(n).decode("utf-8", errors="replace")

    def read_value(fh: BinaryIO, vtype: int) -> Any:
        if vtype in _GGUF_SCALARS:
            return read(fh, _GGUF_SCALARS[vtype])
        if vtype == 8:
            return read_str(fh)
        if vtype == 9:
            item_type = read(fh, "<I")
            count = read(fh, "<Q")
            if count > 1 << 24:
                raise ValueError("array too long")
            return [read_value(fh, item_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")

    try:
        with blob.open() as raw_fh:
            fh: BinaryIO = io.BufferedReader(raw_fh) if isinstance(raw_fh, io.RawIOBase) else raw_fh
            if fh.read(4) != b"GGUF" or read(fh, "<I") < 2:
                return None
            n_tensors = read(fh, "<Q")
            n_kv = read(fh, "<Q")
            if n_tensors > 1_000_000 or n_kv > 1_000_000:
                return None
            kv: dict[str, Any] = {}
            for _ in range(n_kv):
                key = read_str(fh)
                kv[key] = read_value(fh, read(fh, "<I"))
            total = 0
            for _ in range(n_tensors):
                read_str(fh)
                dims = [read(fh, "<Q") for _ in range(read(fh, "<I"))]
                read(fh, "<I")
                read(fh, "<Q")
                count = 1
                for dim in dims:
                    count *= dim
                total += count
    except (struct.error, ValueError, OSError):
        return None
    arch = kv.get("general.architecture")
    info: dict[str, Any] = {"total": total, "architecture": arch}
    if (ctx := kv.get(f"{arch}.context_length")) is not None:
        info["context_length"] = ctx
    if (template := kv.get("tokenizer.chat_template")) is not None:
        info["chat_template"] = template
    tokens = kv.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):
        for name in ("bos", "eos"):
            idx = kv.get(f"tokenizer.ggml.{name}_token_id")
            if isinstance(idx, int) and 0 <= idx < len(tokens):
                info[f"{name}_token"] = tokens[idx]
    return info


# --------------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------------


class FakeHub:
    """In-memory hub state plus the HTTP server that serves it.

    Use ``with running_hub() as hub:`` (or ``start()``/``stop()``). All public methods are
    thread-safe and may be called while clients are downloading.
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, page_size: int = 1000) -> None:
        self.token = token
        self.tokens: set[str] = {token}
        self.page_size = page_size
        self._lock = threading.RLock()
        self._repos: dict[str, FakeRepo] = {}
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._clock = 0
        self._derived: dict[tuple[str, str], Any] = {}
        self._hostile_served: set[str] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeHub:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.name = f"fakehub:{server.server_address[1]}"
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wake keep-alive handler threads blocked on a read
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeHub is not running; call start() or use running_hub()")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Endpoint to pass as ``endpoint=`` or ``HF_ENDPOINT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    # ---- repos and commits -----------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, FileSource],
        *,
        lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS,
        revisions: Mapping[str, Mapping[str, FileSource]] | None = None,
        gated: Literal[False, "auto", "manual"] = False,
        private: bool = False,
        allowed_tokens: set[str] | frozenset[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        message: str = "initial commit",
    ) -> str:
        """Create a repo whose ``main`` holds ``files``; return the ``main`` commit sha.

        ``revisions`` maps tag names to complete file sets committed *before* ``main`` (so each
        tag is an ancestor of main, like a released version). Files matching ``lfs_patterns``
        (fnmatch on the basename, or the full path if the pattern has a ``/``) or larger than
        10 MiB are served as LFS files. ``metadata`` is merged into the model-info JSON in the
        hub's own key spelling (``downloads``, ``likes``, ``tags``, ``library_name``,
        ``pipeline_tag``, ``cardData``, ``gguf``, ``safetensors``, ``createdAt``...); missing
        ``safetensors``/``gguf`` info is derived from the files' headers. Gated and private
        repos need ``Authorization: Bearer <token>`` with a token in ``hub.tokens`` (and in
        ``allowed_tokens`` when given).
        """
        patterns = tuple(lfs_patterns)
        # Hash outside the lock: big files from disk must not stall requests being served.
        tagged = {
            tag: _entries(patterns, tag_files) for tag, tag_files in (revisions or {}).items()
        }
        main_entries = _entries(patterns, files)
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} already exists")
            repo = FakeRepo(
                repo_id=repo_id,
                lfs_patterns=patterns,
                gated=gated,
                private=private,
                allowed_tokens=frozenset(allowed_tokens) if allowed_tokens is not None else None,
                metadata=dict(metadata or {}),
                created_at=self._tick(),
            )
            self._repos[repo_id] = repo
            parent: str | None = None
            for tag, tag_entries in tagged.items():
                parent = self._new_commit(repo, tag_entries, parent, tag)
                repo.tags[tag] = parent
            sha = self._new_commit(repo, main_entries, parent, message)
            repo.branches["main"] = sha
            return sha

    def add_repo_from_dir(self, repo_id: str, path: Path | str, **kwargs: Any) -> str:
        """``add_repo`` with every file under ``path`` (``.git`` excluded), streamed from disk."""
        root = Path(path)
        files: dict[str, FileSource] = {
            p.relative_to(root).as_posix(): p
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts
        }
        return self.add_repo(repo_id, files, **kwargs)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, FileSource] | None = None,
        *,
        delete: tuple[str, ...] | list[str] = (),
        branch: str = "main",
        message: str = "update",
        replace: bool = False,
    ) -> str:
        """New commit on ``branch`` (created from main if missing): add/overwrite ``files``,
        remove ``delete`` (or start empty with ``replace=True``). Returns the new sha."""
        added = _entries(self.repo(repo_id).lfs_patterns, files or {})
        with self._lock:
            repo = self._repo(repo_id)
            head = repo.branches.get(branch) or repo.branches["main"]
            current: dict[str, RepoEntry] = {} if replace else dict(repo.commits[head].files)
            for name in delete:
                current.pop(name, None)
            current.update(added)
            sha = self._new_commit(repo, current, head, message)
            repo.branches[branch] = sha
            return sha

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        """Point tag ``tag`` at ``revision``; returns the commit sha."""
        with self._lock:
            repo = self._repo(repo_id)
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            repo.tags[tag] = commit.sha
            return commit.sha

    def create_branch(self, repo_id: str, branch: str, revision: str = "main") -> str:
        with self._lock:
            repo = self._repo(repo_id)
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(revision)
            repo.branches[branch] = commit.sha
            return commit.sha

    def remove_repo(self, repo_id: str) -> None:
        with self._lock:
            del self._repos[repo_id]

    def update_metadata(self, repo_id: str, **values: Any) -> None:
        """Change model-info fields at runtime (e.g. ``downloads=10``, ``gated="manual"``)."""
        with self._lock:
            repo = self._repo(repo_id)
            for key, value in values.items():
                if key in ("gated", "private"):
                    setattr(repo, key, value)
                else:
                    repo.metadata[key] = value

    def repo_sha(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            commit = self._repo(repo_id).resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit.sha

    def entry(self, repo_id: str, path: str, revision: str = "main") -> RepoEntry:
        """The served file (``.blob.sha256``, ``.blob.git_sha1``, ``.blob.size``, ``.lfs``)."""
        with self._lock:
            commit = self._repo(repo_id).resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit.files[path]

    def repo(self, repo_id: str) -> FakeRepo:
        with self._lock:
            return self._repo(repo_id)

    # ---- faults ----------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        *,
        repo_id: str | None = None,
        path: str | None = None,
        times: int | None = None,
        methods: tuple[str, ...] | None = None,
        target: Literal["any", "api", "file"] = "any",
        at: int | None = None,
        retry_after: int | None = 0,
        bytes_per_second: int = 256 * 1024,
        max_seconds: float = 2.0,
        names: tuple[str, ...] = HOSTILE_NAMES,
        delta: int = 1,
        where: tuple[str, ...] = ("api", "head"),
    ) -> Fault:
        """Make the hub misbehave on the next ``times`` matching requests (``None``: all).

        Matching: ``repo_id`` (None: any repo), ``path`` (fnmatch on the file path; None: any
        file), ``methods`` (e.g. ``("GET",)``), ``target`` (``"api"``: JSON API calls only,
        ``"file"``: ``/resolve`` only). Kinds:

        - ``truncate``: GET body stops at byte offset ``at`` of the file (default: middle) and the
          connection is closed cleanly while ``Content-Length`` announced the full length.
          Applies to a response whose byte range contains ``at`` (a resume from ``at`` gets
          zero bytes, so ``times=None`` is a permanently truncated file).
        - ``flip_byte``: the byte at offset ``at`` is XOR-ed with 0xFF; sizes stay right.
        - ``drop_connection``: after sending the bytes before ``at`` the socket is reset (RST).
        - ``ignore_range``: a Range request is answered 200 with the whole file.
        - ``http_429`` (with ``Retry-After: retry_after`` unless None) / ``http_500``.
        - ``slow``: body throttled to ``bytes_per_second`` for at most ``max_seconds`` per
          response, then sent at full speed (keeps tests bounded).
        - ``hostile_names``: ``names`` are added as files to sibling lists, tree listings and
          paths-info (and served by ``/resolve`` afterwards) with content ``HOSTILE_CONTENT``.
        - ``wrong_size``: sizes off by ``delta`` in API listings (``"api"`` in ``where``) and in
          HEAD ``X-Linked-Size``/``Content-Length`` (``"head"`` in ``where``); GET is honest.
        - ``wrong_sha256``: LFS sha256 wrong in listings (``"api"``) and HEAD ``X-Linked-Etag``
          (``"head"``; for non-LFS files the HEAD ``ETag`` git sha1 is wrong instead).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        fault = Fault(
            kind=kind,
            repo_id=repo_id,
            path=path,
            methods=frozenset(m.upper() for m in methods) if methods else None,
            target=target,
            times=times,
            at=at,
            retry_after=retry_after,
            bytes_per_second=max(1, bytes_per_second),
            max_seconds=max_seconds,
            names=tuple(names),
            delta=delta,
            where=frozenset(where),
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    # ---- request log -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request so far (method, path, headers, status, body bytes, faults applied)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def file_bytes_sent(self, repo_id: str | None = None, file: str | None = None) -> int:
        """Body bytes sent by ``/resolve`` responses (what a cache hit must keep at zero)."""
        return sum(
            r.body_bytes
            for r in self.requests
            if r.kind == "file"
            and (repo_id is None or r.repo_id == repo_id)
            and (file is None or r.file == file)
        )

    def file_requests(self, method: str | None = None) -> list[RequestRecord]:
        return [
            r for r in self.requests if r.kind == "file" and (method is None or r.method == method)
        ]

    # ---- internals -------------------------------------------------------------------------

    def _tick(self) -> datetime:
        self._clock += 1
        return FAKE_EPOCH + timedelta(minutes=self._clock)

    def _repo(self, repo_id: str) -> FakeRepo:
        try:
            return self._repos[repo_id]
        except KeyError:
            raise KeyError(f"no repo {repo_id!r} on the fake hub") from None

    def _new_commit(
        self, repo: FakeRepo, files: dict[str, RepoEntry], parent: str | None, message: str
    ) -> str:
        tree = hashlib.sha1(
            "".join(f"{p}\0{e.oid}\n" for p, e in sorted(files.items())).encode()
        ).hexdigest()
        text = f"repo {repo.repo_id}\ntree {tree}\nparent {parent or ''}\n\n{message}"
        sha = hashlib.sha1(text.encode()).hexdigest()
        if sha not in repo.commits:
            repo.commits[sha] = Commit(sha, parent, dict(files), message, self._tick())
        return sha

    def _take(
        self, kind: str, ctx: _Ctx, applies: Callable[[Fault], bool] | None = None
    ) -> Fault | None:
        """First live fault of ``kind`` matching ``ctx``; counts it as applied once."""
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind or fault.exhausted:
                    continue
                if fault.repo_id is not None and fault.repo_id != ctx.repo_id:
                    continue
                if fault.methods is not None and ctx.method not in fault.methods:
                    continue
                if fault.target != "any" and fault.target != ctx.kind:
                    continue
                if fault.path is not None:
                    if ctx.kind == "file":
                        if ctx.file is None or not fnmatch.fnmatchcase(ctx.file, fault.path):
                            continue
                    elif kind not in _LISTING_KINDS:
                        continue  # a path-scoped 429/500 only hits that file's requests
                if applies is not None and not applies(fault):
                    continue
                fault.hits += 1
                if fault.exhausted:
                    self._faults.remove(fault)
                return fault
            return None

    def _derived_info(self, commit: Commit, key: str) -> Any:
        """Safetensors/GGUF info computed from file headers, cached per commit."""
        cache_key = (commit.sha, key)
        if cache_key in self._derived:
            return self._derived[cache_key]
        result: Any = None
        if key == "safetensors":
            params: dict[str, int] = {}
            for name, entry in commit.files.items():
                if name.endswith(".safetensors"):
                    for dtype, count in (_safetensors_parameters(entry.blob) or {}).items():
                        params[dtype] = params.get(dtype, 0) + count
            if params:
                result = {"parameters": params, "total": sum(params.values())}
        elif key == "gguf":
            for name, entry in sorted(commit.files.items()):
                if name.endswith(".gguf") and (info := _gguf_info(entry.blob)) is not None:
                    result = info
                    break
        self._derived[cache_key] = result
        return result

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)


@contextmanager
def running_hub(**kwargs: Any) -> Iterator[FakeHub]:
    """A started ``FakeHub`` (kwargs go to its constructor), stopped on exit.

    A pytest fixture is one line: ``with running_hub() as hub: yield hub``.
    """
    hub = FakeHub(**kwargs)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@contextmanager
def client_pointed_at(hub: FakeHub, hf_home: Path) -> Iterator[None]:
    """Point this process's huggingface_hub (even if already imported) and children at ``hub``.

    huggingface_hub copies ``HF_ENDPOINT``/``HF_HOME`` into module constants at import time, so
    changing the environment afterwards does nothing in-process. This sets the environment (for
    subprocesses) and patches the copied constants (for this process), restoring both on exit.
    """
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_DISABLE_XET": "1",
    }
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patches: list[tuple[Any, str, Any]] = []
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        values = {
            "ENDPOINT": hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub"),
            "HF_ASSETS_CACHE": str(hf_home / "assets"),
            "HF_TOKEN_PATH": str(hf_home / "token"),
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
            "HF_XET_CACHE": str(hf_home / "xet"),
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_OFFLINE": False,
            "HF_URL_HOSTS": frozenset({*constants.HF_URL_HOSTS, "127.0.0.1"}),
        }
        patches += [(constants, k, v) for k, v in values.items()]
    cache_manager = sys.modules.get("huggingface_hub.utils._cache_manager")
    if cache_manager is not None:
        patches.append((cache_manager, "HF_HUB_CACHE", str(hf_home / "hub")))
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in originals:
            setattr(obj, name, value)
        for key, old in saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# --------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: FakeHub

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a killed apply, a cancelled download) is not the hub's error:
        # socketserver would print its traceback into the test run's output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    return any(v.lower() in ("1", "true", "yes") for v in query.get(name, []))


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive ``(start, end)``; None if bad."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    timeout = 60  # idle keep-alive connections end after this
    server: _Server

    # ---- plumbing --------------------------------------------------------------------------

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with suppress(OSError):
            super().finish()
        with self.hub._lock:
            self.hub._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; ``hub.requests`` is the log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        self._record = RequestRecord(
            method=method, path=self.path, headers=dict(self.headers.items())
        )
        # Logged up front and updated in place (bytes are counted before they are written), so
        # the log is complete as soon as the client has its response.
        self.hub._record(self._record)
        self._is_head = method == "HEAD"
        try:
            self._route(method, split.path, body)
        except (_AbortConnection, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        content_length: int | None = None,
    ) -> None:
        self._record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        self.end_headers()
        if body and not self._is_head:
            self._record.body_bytes += len(body)
            self.wfile.write(body)

    def _json(self, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", **(extra or {})}
        self._send(200, headers, json.dumps(payload).encode())

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        # Header values must be latin-1: escape anything else (file names can be any UTF-8).
        safe = message.encode("ascii", "backslashreplace").decode("ascii")
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": safe}
        if code is not None:
            headers["X-Error-Code"] = code
        headers.update(extra or {})
        self._send(status, headers, json.dumps({"error": message}).encode())

    # ---- auth ------------------------------------------------------------------------------

    def _token(self) -> tuple[str | None, bool]:
        """(token, valid). No header -> (None, True)."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None, True
        scheme, _, value = auth.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or value not in self.hub.tokens:
            return value or None, False
        return value, True

    def _may_see(self, repo: FakeRepo, token: str | None) -> bool:
        if not repo.private:
            return True
        return token is not None and (repo.allowed_tokens is None or token in repo.allowed_tokens)

    def _repo_not_found(self, repo_id: str, token: str | None) -> None:
        self._error(
            401 if token is None else 404,
            "RepoNotFound",
            f"Repository not found: {repo_id}",
        )

    # ---- routing ---------------------------------------------------------------------------

    def _route(self, method: str, path: str, body: bytes) -> None:
        parts = path.lstrip("/").split("/")
        token, valid = self._token()
        if parts[:2] == ["api", "models"]:
            self._record.kind = "api"
            rest = parts[2:]
            if rest and rest[-1] == "" and len(rest) > 1:
                rest = rest[:-1]
            if not valid:
                self._error(401, None, "Invalid credentials in Authorization header")
                return
            if not rest or rest == [""]:
                if not self._http_fault(_Ctx(method, "api", None, None)):
                    self._list_models(token)
                return
            repo_id, remainder = self._split_repo(rest)
            self._record.repo_id = repo_id
            if self._http_fault(_Ctx(method, "api", repo_id, None)):
                return
            self._repo_api(method, repo_id, remainder, token, body)
            return
        if "resolve" in parts[1:3] and len(parts) >= 4:
            idx = parts.index("resolve", 1)
            repo_id = "/".join(unquote(p) for p in parts[:idx])
            if len(parts) < idx + 3:
                self._error(404, None, "Not found")
                return
            revision = unquote(parts[idx + 1])
            file = unquote("/".join(parts[idx + 2 :]))
            self._record.kind = "file"
            self._record.repo_id = repo_id
            self._record.revision = revision
            self._record.file = file
            if not valid:
                self._error(401, None, "Invalid credentials in Authorization header")
                return
            if method not in ("GET", "HEAD"):
                self._error(405, None, "Method not allowed")
                return
            has_range = self.headers.get("Range") is not None
            if self._http_fault(_Ctx(method, "file", repo_id, file, has_range)):
                return
            self._resolve(method, repo_id, revision, file, token)
            return
        self._error(404, None, "Not found")

    def _split_repo(self, rest: list[str]) -> tuple[str, list[str]]:
        names = [unquote(p) for p in rest]
        repos = self.hub._repos
        if len(names) >= 2 and f"{names[0]}/{names[1]}" in repos:
            return f"{names[0]}/{names[1]}", rest[2:]
        if names[0] in repos:
            return names[0], rest[1:]
        if len(names) >= 2 and names[1] not in _API_SUBPATHS:
            return f"{names[0]}/{names[1]}", rest[2:]
        return names[0], rest[1:]

    def _http_fault(self, ctx: _Ctx) -> bool:
        """Answer 429/500 if such a fault matches; True when the request is done."""
        fault = self.hub._take("http_429", ctx)
        if fault is not None:
            self._record.faults.append("http_429")
            extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            self._error(429, None, "Too Many Requests (fake hub)", extra)
            return True
        fault = self.hub._take("http_500", ctx)
        if fault is not None:
            self._record.faults.append("http_500")
            self._error(500, None, "Internal Error - fake hub fault")
            return True
        return False

    # ---- API -------------------------------------------------------------------------------

    def _repo_api(
        self, method: str, repo_id: str, remainder: list[str], token: str | None, body: bytes
    ) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repos.get(repo_id)
        if repo is None or not self._may_see(repo, token):
            self._repo_not_found(repo_id, token)
            return
        sub = remainder[0] if remainder else ""
        if sub == "refs" and method in ("GET", "HEAD"):
            self._json(self._refs_json(repo))
            return
        if sub in ("", "revision", "tree", "commits", "paths-info"):
            revision = unquote(remainder[1]) if len(remainder) > 1 else "main"
            if sub != "" and len(remainder) < 2:
                self._error(404, None, "Not found")
                return
            with hub._lock:
                commit = repo.resolve(revision)
            self._record.revision = revision
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            if sub in ("", "revision") and method in ("GET", "HEAD"):
                self._json(self._model_info_json(repo, commit))
            elif sub == "tree" and method in ("GET", "HEAD"):
                self._tree(repo, commit, unquote("/".join(remainder[2:])))
            elif sub == "commits" and method in ("GET", "HEAD"):
                self._commits(repo, commit)
            elif sub == "paths-info" and method == "POST":
                self._paths_info(repo, commit, body)
            else:
                self._error(405, None, "Method not allowed")
            return
        self._error(404, None, "Not found")

    def _listing_faults(self, repo_id: str) -> tuple[Fault | None, Fault | None, Fault | None]:
        ctx = _Ctx(self.command, "api", repo_id, None)

        def in_api(f: Fault) -> bool:
            return "api" in f.where

        size = self.hub._take("wrong_size", ctx, in_api)
        sha = self.hub._take("wrong_sha256", ctx, in_api)
        hostile = self.hub._take("hostile_names", ctx)
        for fault in (size, sha, hostile):
            if fault is not None:
                self._record.faults.append(fault.kind)
        if hostile is not None:
            with self.hub._lock:
                self.hub._hostile_served.update(hostile.names)
        return size, sha, hostile

    @staticmethod
    def _fault_matches(fault: Fault | None, path: str) -> bool:
        return fault is not None and (fault.path is None or fnmatch.fnmatchcase(path, fault.path))

    def _file_fields(
        self, entry: RepoEntry, size_fault: Fault | None, sha_fault: Fault | None
    ) -> tuple[int, str]:
        size = entry.blob.size
        sha256 = entry.blob.sha256
        if self._fault_matches(size_fault, entry.path):
            assert size_fault is not None
            size += size_fault.delta
        if self._fault_matches(sha_fault, entry.path):
            sha256 = hashlib.sha256(b"wrong:" + sha256.encode()).hexdigest()
        return size, sha256

    def _hostile_entries(self, hostile: Fault | None) -> list[RepoEntry]:
        if hostile is None:
            return []
        blob = Blob(data=HOSTILE_CONTENT)
        return [RepoEntry(path=name, blob=blob, lfs=False) for name in hostile.names]

    def _model_info_json(self, repo: FakeRepo, commit: Commit) -> dict[str, Any]:
        blobs = _flag(self._query, "blobs")
        expand = self._query.get("expand", []) + self._query.get("expand[]", [])
        size_fault, sha_fault, hostile = self._listing_faults(repo.repo_id)
        entries = sorted(commit.files.values(), key=lambda e: e.path)
        entries += self._hostile_entries(hostile)
        siblings: list[dict[str, Any]] = []
        for entry in entries:
            item: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                size, sha256 = self._file_fields(entry, size_fault, sha_fault)
                item["size"] = size
                item["blobId"] = entry.oid
                if entry.lfs:
                    item["lfs"] = {
                        "sha256": sha256,
                        "size": size,
                        "pointerSize": len(entry.pointer),
                    }
            siblings.append(item)
        info = self._info_fields(repo, commit)
        info["siblings"] = siblings
        if expand:
            keep = set(expand) | {"_id", "id"}
            info = {k: v for k, v in info.items() if k in keep}
        return info

    def _info_fields(self, repo: FakeRepo, commit: Commit) -> dict[str, Any]:
        """Model-info fields other than siblings, with repo metadata merged on top."""
        hub = self.hub
        names = list(commit.files)
        tags: list[str] = []
        library = repo.metadata.get("library_name")
        if library:
            tags.append(str(library))
        if any(n.endswith(".safetensors") for n in names):
            tags.append("safetensors")
        if any(n.endswith(".gguf") for n in names):
            tags.append("gguf")
        if repo.metadata.get("pipeline_tag"):
            tags.append(str(repo.metadata["pipeline_tag"]))
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "trendingScore": 0,
            "tags": tags,
            "library_name": library,
            "pipeline_tag": repo.metadata.get("pipeline_tag"),
            "spaces": [],
            "usedStorage": sum(e.blob.size for e in commit.files.values()),
        }
        for key in ("safetensors", "gguf"):
            derived = hub._derived_info(commit, key)
            if derived is not None:
                info[key] = derived
        info.update(repo.metadata)
        info["gated"] = repo.gated
        info["private"] = repo.private
        return {k: v for k, v in info.items() if v is not None}

    def _list_models(self, token: str | None) -> None:
        q = self._query
        hub = self.hub
        with hub._lock:
            repos = [r for r in hub._repos.values() if self._may_see(r, token)]
            heads = {r.repo_id: r.commits[r.branches["main"]] for r in repos}
        searches = [s.lower() for s in q.get("search", []) if s]
        authors = q.get("author", [])
        filters = [f for f in q.get("filter", []) if f]
        pipeline = q.get("pipeline_tag", [])
        library = q.get("library", [])
        gated = q.get("gated", [])
        rows: list[dict[str, Any]] = []
        for repo in repos:
            info = self._info_fields(repo, heads[repo.repo_id])
            labels = {*info.get("tags", []), info.get("library_name"), info.get("pipeline_tag")}
            if any(s not in repo.repo_id.lower() for s in searches):
                continue
            if authors and info.get("author") not in authors:
                continue
            if any(f not in labels for f in filters):
                continue
            if pipeline and info.get("pipeline_tag") not in pipeline:
                continue
            if library and info.get("library_name") not in library:
                continue
            if gated and (gated[0].lower() == "true") != bool(repo.gated):
                continue
            info["siblings"] = [{"rfilename": n} for n in sorted(heads[repo.repo_id].files)]
            rows.append(info)
        sort = (q.get("sort") or [""])[0]
        if sort:
            descending = (q.get("direction") or ["-1"])[0] != "1"
            rows.sort(key=lambda r: (r.get(sort) is not None, r.get(sort) or 0), reverse=descending)
        expand = q.get("expand", []) + q.get("expand[]", [])
        if expand:
            keep = {"_id", "id", *expand}
        else:
            keep = {
                "_id",
                "id",
                "modelId",
                "likes",
                "trendingScore",
                "private",
                "downloads",
                "tags",
                "pipeline_tag",
                "library_name",
                "createdAt",
            }
            if _flag(q, "full"):
                keep |= {"author", "sha", "lastModified", "gated", "disabled", "siblings"}
                keep |= {"safetensors", "gguf", "usedStorage"}
            if _flag(q, "cardData"):
                keep.add("cardData")
            if _flag(q, "config"):
                keep.add("config")
        rows = [{k: v for k, v in r.items() if k in keep} for r in rows]
        limit = q.get("limit")
        page = self.hub.page_size
        if limit:
            try:
                page = max(1, min(page, int(limit[0])))
            except ValueError:
                self._error(400, None, "limit must be an integer")
                return
        self._paged(rows, page, "/api/models")

    def _paged(self, rows: list[Any], page_size: int, path: str) -> None:
        """Send one page of ``rows``, with a ``Link: <...>; rel="next"`` header if more remain."""
        try:
            cursor = int((self._query.get("cursor") or ["0"])[0])
        except ValueError:
            cursor = 0
        page = rows[cursor : cursor + page_size]
        extra: dict[str, str] = {}
        if cursor + page_size < len(rows):
            params = {k: v for k, v in self._query.items() if k != "cursor"}
            params["cursor"] = [str(cursor + page_size)]
            next_url = f"{self.hub.url}{path}?{urlencode(params, doseq=True)}"
            extra["Link"] = f'<{next_url}>; rel="next"'
        self._json(page, extra)

    def _refs_json(self, repo: FakeRepo) -> dict[str, Any]:
        with self.hub._lock:
            branches = dict(repo.branches)
            tags = dict(repo.tags)
        return {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                for n, s in branches.items()
            ],
            "converts": [],
            "tags": [
                {"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in tags.items()
            ],
            "pullRequests": [],
        }

    def _commits(self, repo: FakeRepo, commit: Commit) -> None:
        rows = [
            {
                "id": c.sha,
                "title": c.message.splitlines()[0] if c.message else "",
                "message": c.message,
                "authors": [{"user": "fakehub"}],
                "date": _iso(c.date),
            }
            for c in repo.history(commit)
        ]
        self._paged(rows, self.hub.page_size, urlsplit(self.path).path)

    def _last_commit(self, repo: FakeRepo, commit: Commit, path: str) -> dict[str, str]:
        """Newest commit in ``commit``'s history that changed ``path`` (a file or a folder)."""

        def state(c: Commit) -> list[tuple[str, str]]:
            return sorted(
                (p, e.oid) for p, e in c.files.items() if p == path or p.startswith(path + "/")
            )

        history = repo.history(commit)
        last = history[-1]
        for newer, older in itertools.pairwise(history):
            if state(newer) != state(older):
                last = newer
                break
        return {"id": last.sha, "title": last.message.splitlines()[0], "date": _iso(last.date)}

    def _tree_items(
        self,
        repo: FakeRepo,
        commit: Commit,
        entries: list[RepoEntry],
        folders: list[str],
        size_fault: Fault | None,
        sha_fault: Fault | None,
        expand: bool,
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for folder in folders:
            inner = sorted(
                f"{p}\0{e.oid}" for p, e in commit.files.items() if p.startswith(folder + "/")
            )
            item: dict[str, Any] = {
                "type": "directory",
                "oid": hashlib.sha1("\n".join(inner).encode()).hexdigest(),
                "size": 0,
                "path": folder,
            }
            if expand:
                item["lastCommit"] = self._last_commit(repo, commit, folder)
            items.append(item)
        for entry in entries:
            size, sha256 = self._file_fields(entry, size_fault, sha_fault)
            item = {"type": "file", "oid": entry.oid, "size": size, "path": entry.path}
            if entry.lfs:
                item["lfs"] = {"oid": sha256, "size": size, "pointerSize": len(entry.pointer)}
            if expand:
                item["lastCommit"] = self._last_commit(repo, commit, entry.path)
                item["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
            items.append(item)
        items.sort(key=lambda i: i["path"])
        return items

    def _tree(self, repo: FakeRepo, commit: Commit, path: str) -> None:
        path = path.strip("/")
        recursive = _flag(self._query, "recursive")
        expand = _flag(self._query, "expand")
        prefix = f"{path}/" if path else ""
        all_dirs = {
            "/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)
        }
        if path and path not in all_dirs:
            self._error(
                404,
                "EntryNotFound",
                f"{path} does not exist on {commit.sha}",
                {"X-Repo-Commit": commit.sha},
            )
            return
        size_fault, sha_fault, hostile = self._listing_faults(repo.repo_id)

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        entries = [e for p, e in commit.files.items() if wanted(p)]
        entries += self._hostile_entries(hostile)
        folders = sorted(d for d in all_dirs if wanted(d))
        items = self._tree_items(repo, commit, entries, folders, size_fault, sha_fault, expand)
        self._paged(items, 50 if expand else self.hub.page_size, urlsplit(self.path).path)

    def _paths_info(self, repo: FakeRepo, commit: Commit, body: bytes) -> None:
        form = parse_qs(body.decode(errors="replace"), keep_blank_values=True)
        if not form and body.strip().startswith(b"{"):
            raw = json.loads(body)
            paths = raw.get("paths", [])
            form = {"paths": paths if isinstance(paths, list) else [paths]}
        wanted = [p.strip("/") for p in form.get("paths", [])]
        expand = _flag(form, "expand")
        size_fault, sha_fault, hostile = self._listing_faults(repo.repo_id)
        all_dirs = {
            "/".join(p.split("/")[:i]) for p in commit.files for i in range(1, p.count("/") + 1)
        }
        entries = [commit.files[p] for p in wanted if p in commit.files]
        entries += self._hostile_entries(hostile)
        folders = [p for p in wanted if p in all_dirs]
        self._json(self._tree_items(repo, commit, entries, folders, size_fault, sha_fault, expand))

    # ---- files -----------------------------------------------------------------------------

    def _resolve(
        self, method: str, repo_id: str, revision: str, file: str, token: str | None
    ) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repos.get(repo_id)
            commit = repo.resolve(revision) if repo is not None else None
            hostile_ok = file in hub._hostile_served
        if repo is None or not self._may_see(repo, token):
            self._repo_not_found(repo_id, token)
            return
        if repo.gated and (
            token is None or (repo.allowed_tokens is not None and token not in repo.allowed_tokens)
        ):
            status = 401 if token is None else 403
            self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
            return
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        entry = commit.files.get(file)
        if entry is None and hostile_ok:
            entry = RepoEntry(path=file, blob=Blob(data=HOSTILE_CONTENT), lfs=False)
        if entry is None:
            self._error(
                404,
                "EntryNotFound",
                f"{file} does not exist on {commit.sha}",
                {"X-Repo-Commit": commit.sha},
            )
            return
        self._serve_file(method, repo_id, commit, entry)

    def _serve_file(self, method: str, repo_id: str, commit: Commit, entry: RepoEntry) -> None:
        hub = self.hub
        blob = entry.blob
        size = blob.size
        ctx = _Ctx(method, "file", repo_id, entry.path, self.headers.get("Range") is not None)
        etag = blob.sha256 if entry.lfs else blob.git_sha1
        headers: dict[str, str] = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{etag}"',
            "Vary": "Origin, Accept-Encoding",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(size)

        if method == "HEAD":
            content_length = size
            size_fault = hub._take("wrong_size", ctx, lambda f: "head" in f.where)
            if size_fault is not None:
                self._record.faults.append("wrong_size")
                content_length = size + size_fault.delta
                if entry.lfs:
                    headers["X-Linked-Size"] = str(content_length)
            sha_fault = hub._take("wrong_sha256", ctx, lambda f: "head" in f.where)
            if sha_fault is not None:
                self._record.faults.append("wrong_sha256")
                if entry.lfs:
                    wrong = hashlib.sha256(b"wrong:" + blob.sha256.encode()).hexdigest()
                    headers["X-Linked-Etag"] = f'"{wrong}"'
                    headers["ETag"] = f'"{wrong}"'
                else:
                    wrong = hashlib.sha1(b"wrong:" + blob.git_sha1.encode()).hexdigest()
                    headers["ETag"] = f'"{wrong}"'
            self._send(200, headers, content_length=content_length)
            return

        # GET
        status = 200
        start, end = 0, size - 1
        range_header = self.headers.get("Range")
        if range_header is not None and hub._take("ignore_range", ctx) is not None:
            self._record.faults.append("ignore_range")
            range_header = None
        if range_header is not None:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                self._error(
                    416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"}
                )
                return
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        stop = end + 1

        def covers(f: Fault) -> bool:
            return start <= f.offset_for(size) < stop

        cut_at: int | None = None
        abort_at: int | None = None
        flip_at: int | None = None
        if (fault := hub._take("truncate", ctx, covers)) is not None:
            self._record.faults.append("truncate")
            cut_at = fault.offset_for(size)
        if (fault := hub._take("drop_connection", ctx, covers)) is not None:
            self._record.faults.append("drop_connection")
            abort_at = fault.offset_for(size)
        if (fault := hub._take("flip_byte", ctx, covers)) is not None:
            self._record.faults.append("flip_byte")
            flip_at = fault.offset_for(size)
        slow = hub._take("slow", ctx)
        if slow is not None:
            self._record.faults.append("slow")

        self._record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()

        limit = stop
        for point in (cut_at, abort_at):
            if point is not None:
                limit = min(limit, max(start, point))
        deadline = time.monotonic() + slow.max_seconds if slow is not None else 0.0
        pos = start
        for chunk in blob.iter_range(start, limit):
            if flip_at is not None and pos <= flip_at < pos + len(chunk):
                buf = bytearray(chunk)
                buf[flip_at - pos] ^= 0xFF
                chunk = bytes(buf)
            if slow is not None and time.monotonic() < deadline:
                self._drip(chunk, slow.bytes_per_second, deadline)
            else:
                self._record.body_bytes += len(chunk)
                self.wfile.write(chunk)
            pos += len(chunk)
        if abort_at is not None and limit < stop:
            time.sleep(0.05)  # let the client read what was sent before the reset
            self._reset_connection()
            raise _AbortConnection
        if cut_at is not None and limit < stop:
            self.close_connection = True  # FIN after a short body: "incomplete message body"

    def _drip(self, chunk: bytes, bytes_per_second: int, deadline: float) -> None:
        step = max(1, bytes_per_second // 20)
        for i in range(0, len(chunk), step):
            piece = chunk[i : i + step]
            self._record.body_bytes += len(piece)
            self.wfile.write(piece)
            if time.monotonic() < deadline:
                time.sleep(len(piece) / bytes_per_second)

    def _reset_connection(self) -> None:
        """Close with SO_LINGER 0 so the peer sees a TCP reset, not a clean end of stream."""
        conn = self.connection
        with suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with suppress(OSError):
            self.rfile.close()
        conn.close()
