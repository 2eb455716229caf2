"""Loaded models: load on first use (in the MLX thread), keep at most N, unload when idle.

No code from a model directory ever runs (loaded.py's guard)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_ai.server.engine.loaded import (
    NO_REMOTE_CODE,
    LoadedModel,
    model_type_of,
    refuse_code,
)
from local_ai.server.engine.scheduler import Scheduler

log = logging.getLogger("local_ai.engine")


@dataclass
class TokenizerBundle:
    """What prompt building needs: enough for count_tokens without loading weights."""

    tokenizer: Any  # mlx_lm TokenizerWrapper
    model_type: str


def load_whole(path: str) -> tuple[Any, Any]:
    """The model at `path` and its tokenizer, all of it in this process."""
    from mlx_lm.utils import load

    refuse_code(path)
    # model_file=None as well: the check above and mlx-lm read config.json separately.
    model, tokenizer = load(
        path, tokenizer_config=dict(NO_REMOTE_CODE), model_config={"model_file": None}
    )[:2]
    return model, tokenizer


class ModelRegistry:
    def __init__(
        self,
        scheduler: Scheduler,
        *,
        max_loaded: int,
        idle_ttl_s: int,
    ) -> None:
        self.scheduler = scheduler
        self.max_loaded = max_loaded
        self.idle_ttl_s = idle_ttl_s
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self._tokenizers: dict[str, TokenizerBundle] = {}
        self.last_error: dict[str, str] = {}
        # What reads the weights (a sharded engine loads its rank's share instead).
        self.load_weights: Callable[[str], tuple[Any, Any]] = load_whole
        # Per model path: loads by this engine and the seconds they took (for /metrics).
        self.loads: dict[str, dict[str, float]] = {}
        scheduler.housekeeping = self._housekeeping

    # --- request side (event loop / request threads) -------------------------------------------

    async def acquire(self, path: str) -> LoadedModel:
        """The loaded model at `path`, loading it first if needed; pair with release()."""
        with self._lock:
            loaded = self._models.get(path)
            if loaded is not None:
                loaded.active += 1
                loaded.last_used = time.monotonic()
                return loaded
            self._loading.add(path)
        try:
            future = self.scheduler.call(lambda: self._load(path))
            result: LoadedModel = await asyncio.wrap_future(future)
        finally:
            with self._lock:
                self._loading.discard(path)
        return result

    def release(self, loaded: LoadedModel) -> None:
        with self._lock:
            loaded.active = max(0, loaded.active - 1)
            loaded.last_used = time.monotonic()

    def tokenizer(self, path: str) -> TokenizerBundle:
        """Tokenizer and model type for `path`, from the loaded model or loaded on its own."""
        with self._lock:
            loaded = self._models.get(path)
            if loaded is not None:
                return TokenizerBundle(loaded.tokenizer, loaded.model_type)
            bundle = self._tokenizers.get(path)
        if bundle is None:
            from mlx_lm.tokenizer_utils import load as load_tokenizer

            tokenizer = load_tokenizer(Path(path), tokenizer_config_extra=dict(NO_REMOTE_CODE))
            bundle = TokenizerBundle(tokenizer, model_type_of(path))
            with self._lock:
                self._tokenizers[path] = bundle
        return bundle

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            out = [
                {
                    "path": m.path,
                    "loaded": True,
                    "memory_bytes": m.memory_bytes,
                    "active_requests": m.active,
                    "idle_s": round(now - m.last_used, 1),
                    "cached_prefixes": len(m.prefix_cache.entries),
                    "cached_prefix_bytes": m.prefix_cache.nbytes,
                    "prefixes_evicted_for_memory": m.prefix_cache.evicted_for_memory,
                }
                for m in self._models.values()
            ]
            out += [{"path": p, "loaded": False, "loading": True} for p in self._loading]
        return out

    # --- MLX thread ----------------------------------------------------------------------------

    def pin(self, path: str) -> LoadedModel:
        """Load `path` now and keep it loaded for good (a sharded engine serves only it)."""
        return self._load(path)

    def _load(self, path: str) -> LoadedModel:
        with self._lock:
            existing = self._models.get(path)
            if existing is not None:
                existing.active += 1
                existing.last_used = time.monotonic()
                return existing
        self._evict(keep=self.max_loaded - 1)
        from mlx.utils import tree_flatten
        from mlx_omni_server.chat.mlx.model_types import MLXModel
        from mlx_omni_server.chat.mlx.tools.chat_template import ChatTemplate

        if not (Path(path) / "config.json").is_file():
            # mlx_lm.load would treat a missing directory as a hub repo id and download it.
            self.last_error[path] = f"FileNotFoundError: {path} has no config.json"
            raise FileNotFoundError(f"{path} is not a model directory")
        started = time.perf_counter()
        try:
            model, tokenizer = self.load_weights(path)
        except Exception as exc:
            self.last_error[path] = f"{type(exc).__name__}: {exc}"
            raise
        model_type = model_type_of(path)
        flat = tree_flatten(model.parameters(), destination={})
        memory = sum(int(v.nbytes) for v in flat.values()) if isinstance(flat, dict) else 0
        mlx_model = MLXModel(
            model_id=path,
            adapter_path=None,
            draft_model_id=None,
            model=model,
            tokenizer=tokenizer,
            chat_template=ChatTemplate(model_type, tokenizer),
        )
        now = time.monotonic()
        loaded = LoadedModel(
            path=path,
            model=model,
            tokenizer=tokenizer,
            model_type=model_type,
            mlx_model=mlx_model,
            memory_bytes=memory,
            loaded_at=now,
            last_used=now,
            active=1,
        )
        with self._lock:
            self._models[path] = loaded
            self._tokenizers.pop(path, None)
        self.last_error.pop(path, None)
        seconds = time.perf_counter() - started
        figures = self.loads.setdefault(path, {"count": 0, "seconds": 0.0})
        figures["count"] += 1
        figures["seconds"] += seconds
        log.info("loaded %s (%.1f MB) in %.2fs", path, memory / 1e6, seconds)
        return loaded

    def _evict(self, *, keep: int) -> None:
        """Unload least recently used idle models until at most `keep` remain."""
        with self._lock:
            idle = sorted(
                (m for m in self._models.values() if m.active == 0), key=lambda m: m.last_used
            )
            excess = len(self._models) - max(keep, 0)
            victims = idle[: max(excess, 0)]
            for m in victims:
                del self._models[m.path]
        for m in victims:
            self._unloaded(m, "to make room")

    def _unloaded(self, m: LoadedModel, why: str) -> None:
        import mlx.core as mx

        m.prefix_cache.clear()
        gc.collect()
        mx.clear_cache()
        log.info("unloaded %s (%s)", m.path, why)

    def unload_all(self) -> None:
        with self._lock:
            victims = [m for m in self._models.values() if m.active == 0]
            for m in victims:
                del self._models[m.path]
        for m in victims:
            self._unloaded(m, "requested")

    def _housekeeping(self) -> None:
        now = time.monotonic()
        expired: list[LoadedModel] = []
        with self._lock:
            for m in list(self._models.values()):
                if m.active:
                    continue
                m.prefix_cache.expire(now)
                if self.idle_ttl_s > 0 and now - m.last_used > self.idle_ttl_s:
                    del self._models[m.path]
                    expired.append(m)
        for m in expired:
            self._unloaded(m, f"idle for more than {self.idle_ttl_s}s")
