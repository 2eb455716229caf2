"""HuggingFace safetensors repo -> MLX model directory, through mlx-lm's own code.

The steps are those of ``mlx_lm.convert.convert``: a lazy ``load`` (weights are read when a shard
is written, never all at once), the cast to the target dtype, ``quantize_model`` (with mlx-lm's
mixed-precision predicates for ``mixed_*``), then ``save_model``/``save_config`` and the
tokenizer's ``save_pretrained``. What differs is what local-ai refuses: configs that name model
code to execute (``model_file``, ``auto_map``) and already-quantized sources; and nothing but
``generation_config.json`` is copied from the source (no ``*.py``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from local_ai.convert.recipe import Recipe
from local_ai.convert.safetensors_header import check_safetensors
from local_ai.errors import MalformedFileError, NotYetError, UnsafeInputError
from local_ai.util.failpoints import failpoint

Event = Callable[[dict[str, Any]], None]
MAX_CONFIG_BYTES = 4 << 20


@dataclass
class SafetensorsConversion:
    model_type: str
    dtype: str | None
    bits_per_weight: float | None
    bytes_written: int
    seconds: float
    warnings: list[str]


def read_config(source: Path) -> dict[str, Any]:
    """config.json of a source directory, size-bounded and checked for code references."""
    path = source / "config.json"
    if not path.is_file():
        raise MalformedFileError(
            source, "config.json", "missing: not a HuggingFace model directory"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise MalformedFileError(path, "config.json", "larger than 4 MB")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedFileError(path, "config.json", f"is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise MalformedFileError(path, "config.json", "is not a JSON object")
    if "model_type" not in config:
        raise MalformedFileError(path, "config.json", "has no model_type")
    if config.get("model_file") or config.get("auto_map"):
        raise UnsafeInputError(
            f"{path}: the model asks to run its own Python code (model_file/auto_map); "
            "local-ai does not execute code from model repositories",
        )
    return config


def _dtype(config: dict[str, Any], recipe: Recipe) -> str | None:
    explicit = recipe.target_dtype
    if explicit:
        return explicit
    for holder in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            value = holder.get(key) if isinstance(holder, dict) else None
            if value in ("float16", "bfloat16", "float32"):
                return str(value)
    return None


def convert_safetensors(
    source: Path, out_dir: Path, recipe: Recipe, *, on_event: Event | None = None
) -> SafetensorsConversion:
    """Convert the model directory ``source`` into the existing, empty ``out_dir``."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import compute_bits_per_weight, load, quantize_model, save_config, save_model

    started = time.monotonic()
    emit = on_event or (lambda _e: None)
    config = read_config(source)
    if config.get("quantization") or config.get("quantization_config"):
        raise NotYetError(
            f"{source}: the model is already quantized; converting it again is not supported",
            hint="serve it as it is, or convert the original full-precision repo",
        )
    shards = sorted(source.glob("model*.safetensors"))
    if not shards:
        raise MalformedFileError(source, "model*.safetensors", "no weight files found")
    for shard in shards:
        check_safetensors(shard)  # before mlx maps it: a bad header is a MalformedFileError
    emit({"event": "start", "total_bytes": _weights_bytes(source), "tensors": None})
    try:
        loaded: Any = load(
            str(source),
            return_config=True,
            lazy=True,
            tokenizer_config={"trust_remote_code": False},
        )
        model, tokenizer, config = loaded
    except ValueError as exc:
        if "not supported" in str(exc):
            raise NotYetError(
                f"{source}: {exc}", hint="mlx-lm has no implementation of it"
            ) from None
        raise MalformedFileError(source, "weights", str(exc)) from None
    except RuntimeError as exc:  # mlx's loader: a damaged file the header check let through
        raise MalformedFileError(source, "weights", str(exc)) from None

    dtype = _dtype(config, recipe)
    if dtype is not None:
        target = getattr(mx, dtype)
        cast_predicate = getattr(model, "cast_predicate", lambda _: True)

        def cast_param(key: str, value: Any) -> Any:
            if cast_predicate(key) and mx.issubdtype(value.dtype, mx.floating):
                return value.astype(target)
            return value

        model.update(tree_map_with_path(cast_param, model.parameters()))
    bpw = None
    if recipe.quantized:
        predicate: Any = None
        if recipe.mixed:
            from mlx_lm.convert import mixed_quant_predicate_builder

            predicate = mixed_quant_predicate_builder(recipe.mixed, model, recipe.group_size or 64)
        model, config = quantize_model(
            model,
            config,
            recipe.group_size,
            recipe.bits,
            mode=recipe.mode,
            quant_predicate=predicate,
        )
        bpw = float(cast(Any, compute_bits_per_weight)(model))
    emit(
        {
            "event": "progress",
            "done_bytes": 0,
            "total_bytes": _weights_bytes(source),
            "tensor": "writing shards",
        }
    )
    save_model(out_dir, model, donate_model=True)
    del model
    # In the worker: kill the CLI that waits for it, with the weights written and the rest not.
    failpoint("convert.weights-written", parent=True)
    save_config(config, config_path=out_dir / "config.json")
    tokenizer.save_pretrained(str(out_dir))
    generation = source / "generation_config.json"
    if generation.is_file():
        shutil.copy(generation, out_dir / "generation_config.json")
    written = sum(p.stat().st_size for p in out_dir.glob("model*.safetensors"))
    emit(
        {
            "event": "progress",
            "done_bytes": _weights_bytes(source),
            "total_bytes": _weights_bytes(source),
            "tensor": "done",
        }
    )
    return SafetensorsConversion(
        model_type=str(config["model_type"]),
        dtype=dtype,
        bits_per_weight=bpw,
        bytes_written=written,
        seconds=time.monotonic() - started,
        warnings=[],
    )


def _weights_bytes(source: Path) -> int:
    return sum(p.stat().st_size for p in source.glob("model*.safetensors"))
