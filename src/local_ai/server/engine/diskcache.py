"""KV caches of long prompt prefixes on disk, so the first request after an engine restart or an
idle unload does not prefill Claude Code's 15-30k-token system prompt again.

Layout: `<dir>/<model key>/<tokens>-<prefix hash>.safetensors`, written aside and renamed into
place. The model key hashes the model's config and weight files (name, size, mtime), so a
rebuilt or different model never matches; every file also records its model key, token count and
prefix hash, checked on load. Plain safetensors arrays (no pickle, no class names taken from the
file). Anything unreadable or inconsistent is removed and treated as a miss. Used only from the
scheduler (MLX) thread; least recently used files go first when the directory exceeds its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
import uuid
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_ai.server.engine.loaded import LoadedModel

log = logging.getLogger("local_ai.engine")

FORMAT = "local-ai-prompt-cache/1"
# A prefix is saved when it holds at least this many tokens not already on disk: short prompts
# prefill fast anyway, and each save writes the whole prefix.
DISK_MIN_TOKENS = 1024
_NAME = re.compile(r"^(\d+)-([0-9a-f]{32})\.safetensors$")


def model_key(path: str) -> str:
    """Identity of a model build: config.json and the weight files' names, sizes and mtimes."""
    root = Path(path)
    digest = hashlib.sha256((root / "config.json").read_bytes())
    for weights in sorted(root.glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:32]


def prefix_hash(tokens: list[int]) -> str:
    return hashlib.sha256(array("I", tokens).tobytes()).hexdigest()[:32]


def _entries(directory: Path) -> list[tuple[float, Path, int]]:
    """(mtime, path, size) of every saved prompt cache under `directory`, all models."""
    out: list[tuple[float, Path, int]] = []
    if not directory.is_dir():
        return out
    for file in directory.glob("*/*.safetensors"):
        try:
            stat = file.stat()
        except OSError:
            continue
        out.append((stat.st_mtime, file, stat.st_size))
    return out


def _summary(entries: list[tuple[float, Path, int]]) -> dict[str, int]:
    return {"files": len(entries), "bytes": sum(size for _, _, size in entries)}


def usage(directory: Path) -> dict[str, int]:
    """Files and bytes of the prompt caches under `directory`."""
    return _summary(_entries(directory))


def clear(directory: Path) -> dict[str, int]:
    """Remove every saved prompt cache under `directory`; returns what was removed. Run it on
    the engine's scheduler thread while an engine runs, so no save or load is under way."""
    entries = _entries(directory)
    removed = _summary(entries)
    for _, file, _ in entries:
        with contextlib.suppress(OSError):
            file.unlink()
    for folder in directory.iterdir() if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: anything else was not ours
    log.info("prompt cache: cleared %d files (%d bytes)", removed["files"], removed["bytes"])
    return removed


class DiskPromptCache:
    def __init__(
        self, directory: Path, max_bytes: int, *, min_tokens: int = DISK_MIN_TOKENS
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._keys: dict[int, tuple[Any, str]] = {}
        self.hits = 0
        self.saves = 0
        self.removed_bad = 0

    # --- lookups --------------------------------------------------------------------------

    def _model_dir(self, loaded: LoadedModel) -> Path | None:
        cached = self._keys.get(id(loaded))
        if cached is None or cached[0] is not loaded:
            try:
                cached = (loaded, model_key(loaded.path))
            except OSError:
                return None
            self._keys[id(loaded)] = cached
        return self.directory / cached[1]

    def lookup(self, loaded: LoadedModel, prompt: list[int]) -> tuple[Path, int] | None:
        """The longest saved prefix of `prompt` (the whole prompt included), if any."""
        folder = self._model_dir(loaded)
        if folder is None or not folder.is_dir():
            return None
        best: tuple[Path, int] | None = None
        for file in folder.iterdir():
            match = _NAME.match(file.name)
            if match is None:
                if not file.name.startswith("tmp-"):
                    self._remove(file, "not a prompt cache file")
                continue
            n = int(match.group(1))
            longer = best is None or n > best[1]
            if n <= len(prompt) and longer and prefix_hash(prompt[:n]) == match.group(2):
                best = (file, n)
        return best

    def load(self, loaded: LoadedModel, file: Path, tokens: int) -> list[Any] | None:
        """The KV cache in `file`, checked against the model; None (and the file removed) when
        it is unreadable or does not belong to this model."""
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache, make_prompt_cache

        folder = self._model_dir(loaded)
        try:
            contents: Any = mx.load(str(file), return_metadata=True)
            arrays, meta = contents
            layers = make_prompt_cache(loaded.model)
            expected = {
                "format": FORMAT,
                "model": folder.name if folder else "",
                "tokens": str(tokens),
                "layers": str(len(layers)),
            }
            for name, value in expected.items():
                if meta.get(name) != value:
                    raise ValueError(f"{name} is {meta.get(name)!r}, expected {value!r}")
            if not all(type(c) is KVCache for c in layers) or len(arrays) != 2 * len(layers):
                raise ValueError("the model's cache layout does not match the file")
            per_token = 0
            for i, layer in enumerate(layers):
                keys, values = arrays[f"keys.{i}"], arrays[f"values.{i}"]
                for a in (keys, values):
                    if a.ndim != 4 or a.shape[0] != 1 or a.shape[2] != tokens:
                        raise ValueError(f"layer {i} has shape {a.shape}")
                    per_token += a.shape[1] * a.shape[3] * a.dtype.size
                layer.state = (keys, values)
            known = loaded.kv_bytes_per_token
            if known and per_token != known:
                raise ValueError(f"{per_token} bytes per token, the model takes {known}")
            mx.eval([c.state for c in layers])
        except Exception as exc:
            self._remove(file, f"unusable ({type(exc).__name__}: {exc})")
            return None
        os.utime(file)  # least recently used goes first
        self.hits += 1
        log.info("prompt cache: %d tokens of %s from disk", tokens, loaded.path)
        return layers

    # --- saving ---------------------------------------------------------------------------

    def maybe_save(
        self,
        loaded: LoadedModel,
        prompt: list[int],
        on_disk: int,
        cache: list[Any],
        tokens: list[int],
    ) -> None:
        """Save the prompt's part of a finished generation's cache when it holds at least
        `min_tokens` tokens, and a quarter, more than the longest prefix of it already on disk:
        a growing conversation is rewritten a few times, not on every turn."""
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache

        n = len(prompt)
        new = n - on_disk
        if n < self.min_tokens or new < max(self.min_tokens, on_disk // 4):
            return
        if list(tokens[:n]) != prompt:
            return
        if not all(type(c) is KVCache and c.offset >= n for c in cache):
            return  # sliding-window and recurrent caches cannot be cut at a token
        folder = self._model_dir(loaded)
        if folder is None:
            return
        arrays: dict[str, Any] = {}
        for i, c in enumerate(cache):
            arrays[f"keys.{i}"] = c.keys[..., :n, :]
            arrays[f"values.{i}"] = c.values[..., :n, :]
        size = sum(int(a.nbytes) for a in arrays.values())
        if size > self.max_bytes:
            return
        meta = {"format": FORMAT, "model": folder.name, "tokens": str(n), "layers": str(len(cache))}
        final = folder / f"{n}-{prefix_hash(prompt)}.safetensors"
        temp = folder / f"tmp-{uuid.uuid4().hex}.safetensors"
        started = time.perf_counter()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            mx.save_safetensors(str(temp), arrays, meta)
            temp.replace(final)
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("prompt cache: could not save %s: %s", final, exc)
            temp.unlink(missing_ok=True)
            return
        self.saves += 1
        log.info(
            "prompt cache: saved %d tokens (%.1f MB) in %.2fs",
            n,
            size / 1e6,
            time.perf_counter() - started,
        )
        self.evict()

    def evict(self) -> None:
        """Remove least recently used files until the directory fits `max_bytes`."""
        files = _entries(self.directory)
        total = sum(size for _, _, size in files)
        for _, file, size in sorted(files):
            if total <= self.max_bytes:
                break
            file.unlink(missing_ok=True)
            total -= size

    def _remove(self, file: Path, why: str) -> None:
        log.warning("prompt cache: removing %s: %s", file, why)
        self.removed_bad += 1
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        return {
            "dir": str(self.directory),
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "saves": self.saves,
            "removed_unusable": self.removed_bad,
        }
