"""A model loaded in the engine, and the guard that keeps code from a model directory from running.

No code from a model directory ever runs: tokenizers load with `trust_remote_code=False` (mlx-lm's
own default is True), and a config.json naming a `model_file` (which mlx-lm would import) is
refused."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_ai.server.engine.prefixcache import PrefixCache


@dataclass
class LoadedModel:
    path: str
    model: Any
    tokenizer: Any
    model_type: str
    mlx_model: Any  # Omni's MLXModel container, what its ChatGenerator expects
    memory_bytes: int
    loaded_at: float
    last_used: float
    active: int = 0
    prefix_cache: PrefixCache = field(default_factory=PrefixCache)
    kv_bytes_per_token: int = 0  # set by the scheduler on first use


# Passed to every tokenizer load: mlx_lm.load defaults to trusting the directory's code.
NO_REMOTE_CODE = {"trust_remote_code": False}


class RemoteCodeRefused(ValueError):
    """The model directory asks to run its own Python code."""


def _config(path: str) -> dict[str, Any]:
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return config if isinstance(config, dict) else {}


def model_type_of(path: str) -> str:
    """The `model_type` in the config.json of the model directory at `path`."""
    return str(_config(path).get("model_type", ""))


def refuse_code(path: str) -> None:
    if _config(path).get("model_file"):
        raise RemoteCodeRefused(
            f"{Path(path) / 'config.json'} sets model_file, Python code that mlx-lm would run; "
            "local-ai does not run code from model directories (remove the key, or convert the "
            "original model with `local-ai apply`)"
        )
