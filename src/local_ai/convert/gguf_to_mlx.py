# ruff: noqa: TID253  (runs inside the conversion worker process only)
"""GGUF -> MLX model directory, streaming tensor by tensor (row range by row range).

Which tensors are quantized, with what bits and group size, is decided by mlx-lm itself: a model
skeleton is built from the mapped config (MLX arrays are lazy, so its random weights are never
materialised), cast and quantized with ``mlx_lm.utils.quantize_model`` exactly as ``mlx_lm.convert``
would, and its parameter tree then gives every output tensor's name, shape and dtype. The GGUF's
tensors are checked against that tree before any data is read, then dequantized with gguf-py's
reference dequantizers (MLX's own GGUF loader decodes Q4_K wrongly), un-permuted, cast, quantized
with ``mx.quantize`` and written straight to their place in pre-laid-out safetensors shards. Peak
memory is one chunk of one tensor, not the model.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from local_ai.convert import archs
from local_ai.convert.gguf_reader import GGUFFile, TensorInfo, read_gguf, read_rows
from local_ai.convert.recipe import Recipe
from local_ai.convert.tokenizer import build_tokenizer, write_tokenizer
from local_ai.errors import ConversionError, MalformedFileError, NotYetError

DEFAULT_SHARD_BYTES = 5 << 30  # mlx-lm's shard size
CHUNK_ELEMENTS = 1 << 24  # values dequantized at once (64 MB as float32)
# gguf-py cannot dequantize these (integer and auxiliary types carry no model weights here).
_NO_DEQUANT = {"Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64", "Q1_0"}
_ST_DTYPE = {
    mx.float32: "F32",
    mx.float16: "F16",
    mx.bfloat16: "BF16",
    mx.uint32: "U32",
    mx.uint8: "U8",
    mx.int8: "I8",
    mx.uint16: "U16",
    mx.int32: "I32",
}
_UINT_OF_SIZE = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32}

Event = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class _Output:
    name: str
    shape: tuple[int, ...]
    dtype: Any  # mx.Dtype
    shard: int = 0
    start: int = 0  # offset inside the shard's data section

    @property
    def nbytes(self) -> int:
        n = self.dtype.size
        for d in self.shape:
            n *= d
        return int(n)


@dataclass
class _Item:
    plan: archs.TensorPlan
    quant: dict[str, Any] | None  # group_size/bits/mode when the target module is quantized
    outputs: list[_Output] = field(default_factory=list)


@dataclass
class GGUFConversion:
    """What a finished conversion reports (also written to provenance)."""

    architecture: str
    model_type: str
    dtype: str
    source_types: dict[str, int]
    tensors: int
    bytes_written: int
    shards: int
    seconds: float
    warnings: list[str]
    base_model: str | None


def inspect_gguf(path: Path) -> dict[str, Any]:
    """Header facts the plan and the CLI show before converting (no tensor data read)."""
    gguf = read_gguf(path)
    low = archs.low_bit_types(gguf.tensors)
    arch = gguf.get_str("general.architecture", "?")
    return {
        "architecture": arch,
        "supported": arch in archs.ARCHS,
        "name": gguf.get_str("general.name", ""),
        "file_type": gguf.get_int("general.file_type", -1, minimum=-1),
        "tensor_types": _type_bytes(gguf.tensors),
        "low_bit_types": low,
        "base_model": archs.base_model_repo(gguf),
        "tensor_bytes": sum(t.nbytes for t in gguf.tensors),
        "tensors": len(gguf.tensors),
    }


def _type_bytes(tensors: tuple[TensorInfo, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tensors:
        out[t.type.name] = out.get(t.type.name, 0) + t.nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _model_classes(config: dict[str, Any]) -> tuple[type[Any], Any]:
    from mlx_lm.utils import MODEL_REMAPPING

    model_type = MODEL_REMAPPING.get(config["model_type"], config["model_type"])
    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    return module.Model, module.ModelArgs


def _skeleton(
    config: dict[str, Any], recipe: Recipe, dtype: Any
) -> tuple[Any, dict[str, Any], dict[str, tuple[int, ...]]]:
    """The mlx-lm model for ``config``, cast and quantized as mlx_lm.convert would, plus the
    unquantized parameter shapes. Nothing is evaluated."""
    from mlx.utils import tree_flatten, tree_map_with_path
    from mlx_lm.utils import quantize_model

    model_class, args_class = _model_classes(config)
    model = model_class(args_class.from_dict(config))
    if (
        config.get("tie_word_embeddings")
        and getattr(model, "tie_word_embeddings", None) is False
        and "lm_head" in model
    ):
        # Models that decide tying in sanitize() from the weights (gemma3_text): as mlx-lm's
        # loader does when the checkpoint has no lm_head.
        model.tie_word_embeddings = True
        model.pop("lm_head")
    flat: Any = tree_flatten(model.parameters())
    shapes = {k: tuple(v.shape) for k, v in flat}
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def cast(key: str, value: mx.array) -> mx.array:
        if cast_predicate(key) and mx.issubdtype(value.dtype, mx.floating):
            return value.astype(dtype)
        return value

    model.update(tree_map_with_path(cast, model.parameters()))
    out_config = dict(config)
    if recipe.quantized:
        predicate: Any = None
        if recipe.mixed:
            from mlx_lm.convert import mixed_quant_predicate_builder

            predicate = mixed_quant_predicate_builder(recipe.mixed, model, recipe.group_size or 64)
        model, out_config = quantize_model(
            model,
            out_config,
            recipe.group_size,
            recipe.bits,
            mode=recipe.mode,
            quant_predicate=predicate,
        )
    return model, out_config, shapes


def _layout(
    plans: list[archs.TensorPlan],
    model: Any,
    shapes: dict[str, tuple[int, ...]],
    path: Path,
    shard_bytes: int,
) -> tuple[list[_Item], list[list[_Output]]]:
    """Check the GGUF tensors against the skeleton and lay out every output in shards."""
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(model.parameters())
    params = dict(flat)
    modules = dict(model.named_modules())
    covered: dict[str, set[str]] = {}  # target -> parts written ("" for a whole tensor)
    items: list[_Item] = []
    for plan in plans:
        target = plan.target
        if target not in shapes:
            raise NotYetError(
                f"{path}: tensor {plan.source.name!r} maps to {target!r}, which the mlx-lm "
                f"model does not have",
                hint="the GGUF's metadata and tensors disagree about the architecture",
            )
        part = plan.mla.part if plan.mla is not None and plan.mla.join else ""
        parts = covered.setdefault(target, set())
        if part in parts or (parts and not part) or ("" in parts):
            raise MalformedFileError(path, f"tensor {plan.source.name!r}", "duplicate weight")
        parts.add(part)
        expected = plan.source_shape(shapes[target])
        if plan.source.shape != expected:
            raise MalformedFileError(
                path,
                f"tensor {plan.source.name!r}",
                f"shape {plan.source.shape} does not match the model config, which expects "
                f"{expected}",
            )
        if plan.unpermute_heads is not None and plan.source.shape[0] % (2 * plan.unpermute_heads):
            raise MalformedFileError(
                path, f"tensor {plan.source.name!r}", "rows do not split into rotary head pairs"
            )
        stem, _, leaf = target.rpartition(".")
        module = modules.get(stem)
        quant = None
        names = [target]
        if leaf == "weight" and f"{stem}.scales" in params and module is not None:
            quant = {"group_size": module.group_size, "bits": module.bits, "mode": module.mode}
            names = [n for n in (target, f"{stem}.scales", f"{stem}.biases") if n in params]
        outputs = [_Output(n, tuple(params[n].shape), params[n].dtype) for n in names]
        items.append(_Item(plan, quant, outputs))
    missing = sorted(set(shapes) - set(covered))
    missing += sorted(t for t, parts in covered.items() if parts not in ({""}, {"k", "v"}))
    if missing:
        raise MalformedFileError(
            path,
            "tensors",
            f"{len(missing)} weights the model needs are missing, e.g. {missing[0]!r}",
        )
    shards: list[list[_Output]] = [[]]
    used = 0
    placed_by_name: dict[str, _Output] = {}
    for item in items:
        if item.outputs[0].name in placed_by_name:  # the second half of a joined kv_b_proj
            item.outputs = [placed_by_name[o.name] for o in item.outputs]
            continue
        size = sum(o.nbytes for o in item.outputs)
        if used and used + size > shard_bytes:
            shards.append([])
            used = 0
        placed = []
        for out in item.outputs:
            placed.append(
                _Output(out.name, out.shape, out.dtype, shard=len(shards) - 1, start=used)
            )
            used += out.nbytes
            shards[-1].append(placed[-1])
            placed_by_name[out.name] = placed[-1]
        item.outputs = placed
    return items, shards


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _write_headers(out_dir: Path, shards: list[list[_Output]]) -> tuple[list[int], list[str]]:
    """Create each shard file with its header and full size; returns data-section offsets."""
    names = _shard_names(len(shards))
    bases = []
    for name, outputs in zip(names, shards, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
        for o in outputs:
            header[o.name] = {
                "dtype": _ST_DTYPE[o.dtype],
                "shape": list(o.shape),
                "data_offsets": [o.start, o.start + o.nbytes],
            }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % 8)
        total = sum(o.nbytes for o in outputs)
        with (out_dir / name).open("wb") as handle:
            handle.write(len(raw).to_bytes(8, "little"))
            handle.write(raw)
            handle.truncate(8 + len(raw) + total)
        bases.append(8 + len(raw))
    return bases, names


def _chunks(item: _Item, chunk_elements: int) -> Iterator[tuple[int, int]]:
    info = item.plan.source
    per_row = max(1, info.n_elements // info.outer_rows)
    # Q/K rows move only within their head, kv_b splits by head: chunks hold whole heads.
    unit = item.plan.row_unit
    step = max(unit, chunk_elements // per_row // unit * unit)
    for start in range(0, info.outer_rows, step):
        yield start, min(step, info.outer_rows - start)


def _dequantize(raw: np.ndarray, info: TensorInfo, rows: int) -> mx.array:
    """Values of ``rows`` outer rows as an MLX array (float32, or the stored float type)."""
    shape = (rows, *info.shape[1:])
    kind = info.type.name
    if kind == "F32":
        return mx.array(raw.view(np.float32).reshape(shape))
    if kind == "F16":
        return mx.array(raw.view(np.float16).reshape(shape))
    if kind == "BF16":
        return mx.array(raw.view(np.uint16).reshape(shape)).view(mx.bfloat16)
    if kind in _NO_DEQUANT:
        raise NotYetError(f"tensor {info.name!r}: GGUF type {kind} cannot be converted")
    import gguf

    qtype = gguf.GGMLQuantizationType(info.type.id)
    blocks = raw.reshape(*shape[:-1], -1)
    try:
        values = gguf.quants.dequantize(blocks, qtype)
    except NotImplementedError:
        raise NotYetError(f"tensor {info.name!r}: GGUF type {kind} cannot be converted") from None
    return mx.array(np.asarray(values, dtype=np.float32).reshape(shape))


def _unpermute(w: mx.array, heads: int) -> mx.array:
    """Inverse of llama.cpp's Q/K permutation: per head, rows [x0, y0, x1, y1, …] ->
    [x0, x1, …, y0, y1, …]."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(heads, rows // heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class _Piece:
    """Transformed values and where their rows go in the output: contiguous from ``first``, or
    (``stride`` set) block ``b`` of axis 0 at output row ``first + b * stride``."""

    values: mx.array
    first: int
    stride: int | None = None


def _piece(plan: archs.TensorPlan, w: mx.array, start: int) -> _Piece:
    """``w`` (source rows ``start``…) rearranged for its target (MLA kv_b re-split/re-join)."""
    mla = plan.mla
    if mla is None:
        return _Piece(w, start)
    per_head = mla.nope + mla.v
    if not mla.join:  # rows of the whole kv_b -> embed_q (k, transposed) or unembed_out (v)
        heads = w.reshape(w.shape[0] // per_head, per_head, mla.rank)
        if mla.part == "k":
            return _Piece(heads[:, : mla.nope, :].swapaxes(1, 2), start // per_head)
        return _Piece(heads[:, mla.nope :, :], start // per_head)
    # whole heads of attn_k_b (heads, rank, nope) or attn_v_b (heads, v, rank) -> kv_b rows
    if mla.part == "k":
        return _Piece(w.swapaxes(1, 2), start * per_head, per_head)
    return _Piece(w, start * per_head + mla.nope, per_head)


def _as_bytes(a: mx.array) -> memoryview:
    if a.dtype.size in _UINT_OF_SIZE and a.dtype not in (mx.uint8, mx.uint16, mx.uint32):
        a = a.view(_UINT_OF_SIZE[a.dtype.size])
    return np.ascontiguousarray(np.asarray(a)).data.cast("B")


def convert_gguf(
    source: Path,
    out_dir: Path,
    recipe: Recipe,
    *,
    on_event: Event | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> GGUFConversion:
    """Convert ``source`` into the existing, empty directory ``out_dir``, reading at most
    about ``chunk_elements`` values of one tensor at a time."""
    started = time.monotonic()
    emit = on_event or (lambda _e: None)
    gguf = read_gguf(source)
    arch = archs.arch_for(gguf)
    config = archs.hf_config(gguf)
    plans = archs.tensor_plan(gguf, config)
    has_bf16 = any(t.type.name == "BF16" for t in gguf.tensors)
    dtype_name = recipe.target_dtype or ("bfloat16" if has_bf16 else "float16")
    dtype = getattr(mx, dtype_name)
    warnings: list[str] = []
    facts_low = archs.low_bit_types(gguf.tensors)
    base = archs.base_model_repo(gguf)
    warning = archs.requantize_warning(facts_low, base, recipe)
    if warning:
        warnings.append(warning)
        emit({"event": "warning", "message": warning})

    tok = _tokenizer(gguf, config)
    for w in tok.warnings:
        warnings.append(w)
        emit({"event": "warning", "message": w})

    model, out_config, shapes = _skeleton(config, recipe, dtype)
    items, shards = _layout(plans, model, shapes, source, shard_bytes)
    del model
    bases, shard_names = _write_headers(out_dir, shards)
    total = sum(i.plan.source.nbytes for i in items)
    emit({"event": "start", "total_bytes": total, "tensors": len(items)})

    done = 0
    fds = [os.open(out_dir / n, os.O_WRONLY) for n in shard_names]
    try:
        with source.open("rb", buffering=0) as handle:
            for item in items:
                _convert_item(handle, item, fds, bases, dtype, chunk_elements)
                done += item.plan.source.nbytes
                emit(
                    {
                        "event": "progress",
                        "done_bytes": done,
                        "total_bytes": total,
                        "tensor": item.plan.source.name,
                    }
                )
                mx.clear_cache()
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)

    _write_config(out_dir, out_config, dtype_name, tok)
    write_tokenizer(tok, out_dir)
    weight_map = {o.name: shard_names[o.shard] for s in shards for o in s}
    index = {
        "metadata": {"total_size": sum(o.nbytes for s in shards for o in s)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return GGUFConversion(
        architecture=arch.gguf_arch,
        model_type=str(config["model_type"]),
        dtype=dtype_name,
        source_types=_type_bytes(gguf.tensors),
        tensors=len(items),
        bytes_written=int(index["metadata"]["total_size"]),  # type: ignore[index]
        shards=len(shards),
        seconds=time.monotonic() - started,
        warnings=warnings,
        base_model=base,
    )


def _tokenizer(gguf: GGUFFile, config: dict[str, Any]) -> Any:
    # Imported first, so that failing to load the libraries (out of memory) is not blamed on
    # the file below.
    import tokenizers  # noqa: F401
    import transformers.integrations.ggml  # noqa: F401

    try:
        return build_tokenizer(
            gguf,
            model_max_length=config.get("max_position_embeddings"),
            end_of_turn=archs.arch_for(gguf).end_of_turn,
        )
    except (MalformedFileError, NotYetError, MemoryError):
        raise
    except Exception as exc:  # the tokenizers library rejecting hostile vocabularies
        raise MalformedFileError(gguf.path, "metadata 'tokenizer.*'", str(exc)) from None


def _convert_item(
    handle: Any, item: _Item, fds: list[int], bases: list[int], dtype: Any, chunk_elements: int
) -> None:
    info = item.plan.source
    row_bytes = info.bytes_per_outer_row
    for start, rows in _chunks(item, chunk_elements):
        raw = np.empty(rows * row_bytes, dtype=np.uint8)
        read_rows(handle, info, start, rows, raw)
        w = _dequantize(raw, info, rows)
        del raw
        if item.plan.unpermute_heads is not None:
            w = _unpermute(w, rows * item.plan.unpermute_heads // info.outer_rows)
        if item.plan.add:
            w = w.astype(mx.float32) + item.plan.add
        piece = _piece(item.plan, w, start)
        w = piece.values if item.plan.mla is None else mx.contiguous(piece.values)
        # Unquantized outputs take the skeleton's dtype: mlx-lm's cast_predicate keeps some
        # in float32 (glm4_moe's e_score_correction_bias).
        w = w.astype(dtype if item.quant is not None else item.outputs[0].dtype)
        # MLX's CPU isfinite on fp16 is slow: float outputs are checked as bits in numpy instead
        # (non-finite weights make non-finite scales); mxfp4 scales are exponents, so check w.
        mxfp4 = item.quant is not None and item.quant["mode"] == "mxfp4"
        finite = mx.all(mx.isfinite(w)) if mxfp4 else mx.array(True)
        if item.quant is not None:
            results = list(
                mx.quantize(
                    w,
                    group_size=item.quant["group_size"],
                    bits=item.quant["bits"],
                    mode=item.quant["mode"],
                )
            )
        else:
            results = [w]
        mx.eval(finite, *results)
        if not finite.item():
            raise MalformedFileError(
                info_path(handle), f"tensor {info.name!r}", "contains NaN or infinite values"
            )
        if len(results) != len(item.outputs):
            raise ConversionError(f"{info.name}: quantization produced an unexpected layout")
        row_axis = 0 if piece.stride is None else 1
        for out, arr in zip(item.outputs, results, strict=True):
            if tuple(arr.shape[row_axis + 1 :]) != out.shape[1:] or arr.dtype != out.dtype:
                raise ConversionError(
                    f"{info.name}: produced {arr.dtype}{tuple(arr.shape)}, "
                    f"expected {out.dtype}{out.shape}"
                )
            per_row = out.nbytes // out.shape[0]
            data = _as_bytes(arr)
            if not _finite_bits(data, arr.dtype):
                raise MalformedFileError(
                    info_path(handle), f"tensor {info.name!r}", "contains NaN or infinite values"
                )
            if piece.stride is None:
                blocks = [(piece.first, data)]
            else:
                size = arr.shape[1] * per_row
                blocks = [
                    (piece.first + b * piece.stride, data[b * size : (b + 1) * size])
                    for b in range(arr.shape[0])
                ]
            for row, block in blocks:
                offset = bases[out.shard] + out.start + row * per_row
                written = 0
                while written < len(block):
                    written += os.pwrite(fds[out.shard], block[written:], offset + written)


_EXPONENT_MASKS = {
    mx.float16: (np.uint16, 0x7C00),
    mx.bfloat16: (np.uint16, 0x7F80),
    mx.float32: (np.uint32, 0x7F800000),
}


def _finite_bits(data: memoryview, dtype: Any) -> bool:
    """No inf/NaN among float values given as raw bytes (all exponent bits set means one)."""
    if dtype not in _EXPONENT_MASKS:
        return True
    kind, mask = _EXPONENT_MASKS[dtype]
    bits = np.frombuffer(data, dtype=kind)
    return not bool(np.any((bits & kind(mask)) == kind(mask)))


def info_path(handle: Any) -> Path:
    return Path(getattr(handle, "name", "?"))


def _write_config(out_dir: Path, config: dict[str, Any], dtype: str, tok: Any) -> None:
    config = dict(config)
    config["torch_dtype"] = dtype
    if tok.bos_token_id is not None:
        config["bos_token_id"] = tok.bos_token_id
    if tok.eos_token_ids:
        ids = tok.eos_token_ids
        config["eos_token_id"] = ids[0] if len(ids) == 1 else ids
    if tok.pad_token_id is not None:
        config["pad_token_id"] = tok.pad_token_id
    (out_dir / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
