"""A resolved model source: the exact commit and files a manifest entry stands for.

Plain data, shared by resolution, fetching, the lock file and the store (no I/O here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Format = Literal["mlx", "safetensors", "gguf"]
SourceKind = Literal["repo", "path"]
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
GIT_OID_RE = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class SourceFile:
    """One file of a source. LFS files come with their sha256; small git files only with their
    git blob id (sha1 of "blob <size>\\0" + content) until they are fetched and hashed."""

    name: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def identity(self) -> str | None:
        """A content identity that does not change once a fetch learns a git file's sha256:
        the git blob id when the hub gave one, else the sha256 (local files)."""
        return f"git-{self.blob_id}" if self.blob_id else self.sha256


@dataclass(frozen=True)
class Quantization:
    """Quantization an MLX repo already carries (config.json "quantization")."""

    bits: int | None = None
    group_size: int | None = None
    mode: str | None = None

    @property
    def label(self) -> str:
        if self.mode and self.mode != "affine":
            return self.mode
        return f"{self.bits}bit" if self.bits else "quantized"


@dataclass(frozen=True)
class ResolvedSource:
    """What `alias` resolves to. For repos: `commit` is a full sha and `files` the exact list to
    fetch; for local paths: `path` is absolute and sha256s are filled in when first hashed."""

    alias: str
    kind: SourceKind
    format: Format
    files: tuple[SourceFile, ...]
    repo: str | None = None
    revision: str | None = None  # as asked (default "main"); `commit` is what it meant
    commit: str | None = None
    file: str | None = None  # the GGUF file inside `repo`
    path: str | None = None
    quantization: Quantization | None = None
    base_model: str | None = None
    extra_files: tuple[str, ...] = ()
    from_cache: bool = field(default=False, compare=False)  # resolved offline

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def label(self) -> str:
        if self.kind == "path":
            return str(self.path)
        label = str(self.repo)
        if self.file:
            label += f":{self.file}"
        return label + f"@{(self.commit or '')[:12]}"

    def with_sha256s(self, sha256s: Mapping[str, str]) -> ResolvedSource:
        """This source with the sha256s a fetch verified (by file name) filled in for files the
        hub knows by git blob id only."""
        files = tuple(
            f if f.sha256 or f.name not in sha256s else replace(f, sha256=sha256s[f.name])
            for f in self.files
        )
        return replace(self, files=files)

    def by_name(self) -> dict[str, SourceFile]:
        return {f.name: f for f in self.files}
