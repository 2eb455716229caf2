"""How big a model is: bits per weight, KV-cache bytes, memory at a quantize level, and the level
`quantize = "auto"` chooses. The one answer for the planner, search ranking, `models add` and
`models convert` (docs/discovery.md, "Sizing").

Pure and at the bottom of the layers: no I/O and no imports of the project's other modules, so
every caller sizes a model with the same numbers.

Bits per weight include the storage of the scales:

- GGML tensor types from their block geometry (``GGML_TYPES``: values and bytes per block, the
  file format's own definition; tested against ``gguf.constants.GGML_QUANT_SIZES``): Q6_K is
  210 bytes per 256 weights, 6.5625 bits.
- GGUF file types that are llama-quantize's mixes (Q4_K_M keeps some tensors at Q6_K) as
  llama.cpp measured them on Llama-3.1-8B (``GGUF_FILE_TYPE_BITS``).
- MLX affine levels: ``bits + 32 / group_size`` (an fp16 scale and bias per group); MLX's
  microscaled modes one 8-bit scale per group (mxfp4: 4 + 8/32 = 4.25).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

GIB: Final = 1024**3

# ---- GGUF ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int  # values per block
    type_size: int  # bytes per block

    @property
    def bits(self) -> float:
        return self.type_size * 8 / self.block_size


# ggml's tensor types (ggml.h), with block geometry; the ids are part of the file format.
GGML_TYPES: Final[dict[int, GGMLType]] = {
    t.id: t
    for t in (
        GGMLType(0, "F32", 1, 4),
        GGMLType(1, "F16", 1, 2),
        GGMLType(2, "Q4_0", 32, 18),
        GGMLType(3, "Q4_1", 32, 20),
        GGMLType(6, "Q5_0", 32, 22),
        GGMLType(7, "Q5_1", 32, 24),
        GGMLType(8, "Q8_0", 32, 34),
        GGMLType(9, "Q8_1", 32, 40),
        GGMLType(10, "Q2_K", 256, 84),
        GGMLType(11, "Q3_K", 256, 110),
        GGMLType(12, "Q4_K", 256, 144),
        GGMLType(13, "Q5_K", 256, 176),
        GGMLType(14, "Q6_K", 256, 210),
        GGMLType(15, "Q8_K", 256, 292),
        GGMLType(16, "IQ2_XXS", 256, 66),
        GGMLType(17, "IQ2_XS", 256, 74),
        GGMLType(18, "IQ3_XXS", 256, 98),
        GGMLType(19, "IQ1_S", 256, 50),
        GGMLType(20, "IQ4_NL", 32, 18),
        GGMLType(21, "IQ3_S", 256, 110),
        GGMLType(22, "IQ2_S", 256, 82),
        GGMLType(23, "IQ4_XS", 256, 136),
        GGMLType(24, "I8", 1, 1),
        GGMLType(25, "I16", 1, 2),
        GGMLType(26, "I32", 1, 4),
        GGMLType(27, "I64", 1, 8),
        GGMLType(28, "F64", 1, 8),
        GGMLType(29, "IQ1_M", 256, 56),
        GGMLType(30, "BF16", 1, 2),
        GGMLType(34, "TQ1_0", 256, 54),
        GGMLType(35, "TQ2_0", 256, 66),
        GGMLType(39, "MXFP4", 32, 17),
        GGMLType(40, "NVFP4", 64, 36),
        GGMLType(41, "Q1_0", 128, 18),
    )
}
GGML_TYPE_BITS: Final[dict[str, float]] = {t.name: t.bits for t in GGML_TYPES.values()}

# llama-quantize's file types that mix tensor types, in bits per weight of the whole file as
# llama.cpp measured them on Llama-3.1-8B (tools/quantize/README.md). Q3_K_M is missing there:
# its 3.74 GiB (tools/quantize/quantize.cpp) at that table's 16.0005 bits per 14.96 GiB. Labels
# naming one tensor type (Q8_0, Q6_K, Q4_0, F16...) count at that type's geometry.
GGUF_FILE_TYPE_BITS: Final[dict[str, float]] = {
    "IQ1_S": 2.0042,
    "IQ1_M": 2.1460,
    "IQ2_XXS": 2.3824,
    "IQ2_XS": 2.5882,
    "IQ2_S": 2.7403,
    "IQ2_M": 2.9294,
    "IQ3_XXS": 3.2548,
    "IQ3_XS": 3.4977,
    "IQ3_S": 3.6606,
    "IQ3_M": 3.7628,
    "IQ4_XS": 4.4597,
    "IQ4_NL": 4.6818,
    "Q2_K_S": 2.9697,
    "Q2_K": 3.1593,
    "Q3_K_S": 3.6429,
    "Q3_K_M": 4.0001,
    "Q3_K_L": 4.2979,
    "Q4_K_S": 4.6672,
    "Q4_K_M": 4.8944,
    "Q5_K_S": 5.5704,
    "Q5_K_M": 5.7036,
}
# llama-quantize's own aliases (quantize.cpp): a bare K type names its _M mix.
GGUF_FILE_TYPE_ALIASES: Final[dict[str, str]] = {
    "Q3_K": "Q3_K_M",
    "Q4_K": "Q4_K_M",
    "Q5_K": "Q5_K_M",
}


def gguf_bits(label: str) -> float | None:
    """Bits per weight of a GGUF file by its type label ('Q4_K_M', 'UD-Q4_K_XL', 'q8_0'): the
    measured mix, else the tensor type's geometry; an unknown suffix (unsloth's _XL) counts as
    the label without it. None for a label that names no GGML type."""
    name = label.upper().removeprefix("UD-")
    while name:
        name = GGUF_FILE_TYPE_ALIASES.get(name, name)
        if name in GGUF_FILE_TYPE_BITS:
            return GGUF_FILE_TYPE_BITS[name]
        if name in GGML_TYPE_BITS:
            return GGML_TYPE_BITS[name]
        name = name.rpartition("_")[0]
    return None


# ---- MLX ----------------------------------------------------------------------------------

DEFAULT_GROUP_SIZE: Final = 64
AFFINE_BITS: Final[dict[str, int]] = {"q2": 2, "q3": 3, "q4": 4, "q5": 5, "q6": 6, "q8": 8}
# MLX microscaled modes: (element bits, group size, scale bits), mlx.core.quantize's definitions.
_MODES: Final[dict[str, tuple[int, int, int]]] = {
    "mxfp4": (4, 32, 8),
    "nvfp4": (4, 16, 8),
    "mxfp8": (8, 32, 8),
}
MODE_BITS: Final[dict[str, float]] = {m: b + s / g for m, (b, g, s) in _MODES.items()}
# mlx-lm's mixed recipes: their low level on most layers, 6 bits on the sensitive ones.
MIXED_BITS: Final[dict[str, float]] = {"mixed_3_6": 4.0, "mixed_4_6": 5.0}
# Levels whose bits do not depend on a group size.
FIXED_LEVEL_BITS: Final[dict[str, float]] = {
    "mxfp4": MODE_BITS["mxfp4"],
    **MIXED_BITS,
    "bf16": 16.0,
    "fp16": 16.0,
}
# Every concrete `quantize` level of the manifest (a test checks the two lists agree).
CONCRETE_LEVELS: Final[tuple[str, ...]] = (*AFFINE_BITS, *FIXED_LEVEL_BITS)


def affine_bits(bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> float:
    """An MLX affine quantization: the weights plus an fp16 scale and bias per group."""
    return bits + 32 / group_size


def mlx_quant_bits(
    bits: int | None, group_size: int | None = None, mode: str | None = None
) -> float | None:
    """Bits per weight of an MLX config.json "quantization" block (bits, group_size, mode)."""
    if mode and mode != "affine":
        return MODE_BITS.get(mode)
    if not bits or bits <= 0:
        return None
    return affine_bits(bits, group_size or DEFAULT_GROUP_SIZE)


def level_bits(level: str, group_size: int = DEFAULT_GROUP_SIZE) -> float:
    """Bits per weight of a concrete `quantize` level once converted (ValueError for others)."""
    if level in AFFINE_BITS:
        return affine_bits(AFFINE_BITS[level], group_size)
    if level in FIXED_LEVEL_BITS:
        return FIXED_LEVEL_BITS[level]
    raise ValueError(f"{level!r} is not a concrete quantize level")


def weights_at(source_bytes: int, source_bits: float | None, bits: float | None) -> int:
    """Bytes of weights at ``bits`` per weight, rescaled from the source's; the source's own size
    when either is unknown (served as is)."""
    if bits is None or not source_bits:
        return source_bytes
    return int(source_bytes * bits / source_bits)


WEIGHT_SUFFIXES: Final = (".safetensors", ".gguf")


def weight_bytes(files: Iterable[tuple[str, int]]) -> int:
    """Bytes of the weight files among (name, size) pairs: what scales with quantization
    (tokenizers and configs do not)."""
    return sum(size for name, size in files if name.lower().endswith(WEIGHT_SUFFIXES))


# ---- KV cache -----------------------------------------------------------------------------

# Layers assumed when no config.json could be read, by parameter count.
_LAYERS_BY_PARAMS: Final = ((4e9, 28), (10e9, 36), (20e9, 40), (40e9, 48), (80e9, 64), (150e9, 80))
_FALLBACK_LAYERS: Final = 96
_UNKNOWN_SIZE_LAYERS: Final = 36


def kv_cache_bytes(
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    context: int,
    bytes_per_elem: float = 2,
) -> int:
    """Bytes of a full KV cache: keys and values for every layer, KV head and position.

    ``2 * num_layers * num_kv_heads * head_dim * context * bytes_per_elem``; fp16/bf16 is
    2 bytes per element, an 8-bit cache about 1 (quantization scales not included). Rounded
    up to a whole byte.
    """
    for name, value in (
        ("num_layers", num_layers),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
        ("context", context),
        ("bytes_per_elem", bytes_per_elem),
    ):
        if value < 0:
            raise ValueError(f"{name} must not be negative, not {value}")
    elements = 2 * num_layers * num_kv_heads * head_dim * context
    return math.ceil(elements * Fraction(str(bytes_per_elem)))


@dataclass(frozen=True)
class ArchShape:
    """What sizes the KV cache: layers, KV heads and head dimension (MLA models cache one
    compressed latent per layer, written here as one head of half the latent width, since
    ``kv_cache_bytes`` counts keys and values)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    estimated: bool = False

    def kv_bytes(self, context: int) -> int:
        return kv_cache_bytes(self.num_layers, self.num_kv_heads, self.head_dim, context)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def shape_from_config(config: Mapping[str, Any]) -> ArchShape | None:
    """The KV-cache shape from a transformers/MLX config.json, or None if it says too little."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and not _int(config.get("num_hidden_layers")):
        return shape_from_config(text)
    layers = _int(config.get("num_hidden_layers")) or _int(config.get("n_layer"))
    layers = layers or _int(config.get("num_layers"))
    if layers is None:
        return None
    latent = _int(config.get("kv_lora_rank"))
    if latent is not None:  # DeepSeek V3 / Kimi K2 multi-head latent attention
        rope = _int(config.get("qk_rope_head_dim")) or 0
        return ArchShape(layers, 1, math.ceil((latent + rope) / 2))
    heads = _int(config.get("num_attention_heads")) or _int(config.get("n_head"))
    kv_heads = _int(config.get("num_key_value_heads")) or heads
    head_dim = _int(config.get("head_dim"))
    hidden = _int(config.get("hidden_size")) or _int(config.get("n_embd"))
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    if kv_heads is None or head_dim is None:
        return None
    return ArchShape(layers, kv_heads, head_dim)


def estimated_shape(params: int | None) -> ArchShape:
    """A typical grouped-query shape for a model of this size (8 KV heads of 128), for when
    no config.json is readable (GGUF-only or gated repos). Marked as an estimate."""
    layers = _UNKNOWN_SIZE_LAYERS if params is None else _FALLBACK_LAYERS
    for limit, count in _LAYERS_BY_PARAMS:
        if params is not None and params < limit:
            layers = count
            break
    return ArchShape(layers, 8, 128, estimated=True)


def params_from_bytes(weights: int, bits: float | None) -> int | None:
    """Parameters a weight size stands for at ``bits`` per weight (None when unknown)."""
    return int(weights * 8 / bits) or None if bits else None


# ---- memory -------------------------------------------------------------------------------

# Converting streams one tensor at a time: it holds about one source shard plus this share of
# the output.
CONVERT_PEAK_FRACTION: Final = 0.15


def convert_peak_bytes(largest_source_file: int, output_bytes: int) -> int:
    """Memory a conversion needs at its peak."""
    return largest_source_file + int(output_bytes * CONVERT_PEAK_FRACTION)


def format_gb(n: int) -> str:
    return f"{n / GIB:.1f} GB"


def format_context(context: int) -> str:
    return f"{context // 1024}k" if context % 1024 == 0 else f"{context:,}"


# ---- quantize = "auto" --------------------------------------------------------------------

AUTO_LEVELS: Final[tuple[str, ...]] = ("bf16", "q8", "q6", "q5", "q4", "q3", "q2")
# Assumed when the source's precision is unknown (safetensors without a quantization block).
DEFAULT_SOURCE_BITS: Final = 16.0
AS_PUBLISHED: Final = "as published"


def candidate_levels(
    source_level: str | None = None, group_size: int = DEFAULT_GROUP_SIZE
) -> tuple[str, ...]:
    """AUTO_LEVELS, plus the source's own level when it is a concrete one other than those (an
    mxfp4 model is kept in mxfp4 rather than requantized); best quality first."""
    if source_level is None or source_level in AUTO_LEVELS or source_level not in FIXED_LEVEL_BITS:
        return AUTO_LEVELS
    levels = (*AUTO_LEVELS, source_level)
    return tuple(sorted(levels, key=lambda lv: -level_bits(lv, group_size)))


def allowed(level: str, source_bits: float, group_size: int = DEFAULT_GROUP_SIZE) -> bool:
    """Never upcast: a level is allowed when its bits do not exceed the source's; q8 also from
    8-bit float sources (fp8: same quality class, the group scales are the only extra)."""
    bits = level_bits(level, group_size)
    return bits <= source_bits + 1e-6 or (level == "q8" and source_bits >= 8)


@dataclass(frozen=True)
class LevelFit:
    """One candidate level: the bytes it needs and whether that fits."""

    level: str
    bits: float
    weights_bytes: int
    kv_bytes: int
    usable_bytes: int

    @property
    def needed(self) -> int:
        return self.weights_bytes + self.kv_bytes

    @property
    def fits(self) -> bool:
        return self.needed <= self.usable_bytes


@dataclass(frozen=True)
class AutoLevel:
    """What `quantize = "auto"` means for one model on one machine.

    ``level`` is the concrete level to convert to, or None when the source (an MLX repo) is
    served as published. ``reason`` is one line for the plan, e.g. ``auto → q4: the best
    quality that fits (needs 19.3 GB of 21.4 GB usable at 32k context; q5 would need 22.8 GB)``.
    """

    level: str | None
    bits: float
    fits: bool
    weights_bytes: int
    kv_bytes: int
    usable_bytes: int
    context: int
    reason: str
    tried: tuple[LevelFit, ...] = ()  # better levels rejected, best first

    @property
    def needed(self) -> int:
        return self.weights_bytes + self.kv_bytes

    @property
    def label(self) -> str:
        return self.level or AS_PUBLISHED


def choose_level(
    source_bytes: int,
    source_bits: float,
    kv_bytes: int,
    usable_bytes: int,
    *,
    context: int,
    group_size: int = DEFAULT_GROUP_SIZE,
    source_is_mlx: bool = False,
    source_level: str | None = None,
) -> AutoLevel:
    """The highest-quality level whose weights (``source_bytes`` rescaled from ``source_bits``
    to the level's bits) plus ``kv_bytes`` fit in ``usable_bytes``.

    Levels above the source precision are never chosen. An MLX source is served as published
    first, requantized only to levels below its own precision. When nothing fits, the smallest
    allowed level is returned with ``fits`` False, so callers report the shortfall.
    ``usable_bytes`` <= 0 means unknown: the best allowed level is taken. ``source_level``
    names the source's own level when it has one (``mxfp4``): it is then a candidate too.
    """
    if source_bytes < 0 or source_bits <= 0 or kv_bytes < 0:
        raise ValueError("source_bytes and kv_bytes must be >= 0 and source_bits > 0")
    where = f"at {format_context(context)} context"

    def option(level: str) -> LevelFit:
        bits = level_bits(level, group_size)
        return LevelFit(
            level, bits, weights_at(source_bytes, source_bits, bits), kv_bytes, usable_bytes
        )

    levels = candidate_levels(source_level, group_size)
    allowed_levels = [lv for lv in levels if allowed(lv, source_bits, group_size)]
    if source_is_mlx:
        as_is = LevelFit(AS_PUBLISHED, source_bits, source_bytes, kv_bytes, usable_bytes)
        lower = [lv for lv in allowed_levels if level_bits(lv, group_size) < source_bits - 1e-6]
        options = [as_is, *(option(lv) for lv in lower)]
    else:
        options = [option(lv) for lv in allowed_levels or [levels[-1]]]
    if usable_bytes <= 0:
        return _result(
            options[0], True, context, "the best quality allowed (usable memory unknown)"
        )
    tried: list[LevelFit] = []
    for candidate in options:
        if candidate.fits:
            better = (
                f"; {tried[-1].level} would need {format_gb(tried[-1].needed)}" if tried else ""
            )
            why = (
                f"the best quality that fits (needs {format_gb(candidate.needed)} of "
                f"{format_gb(usable_bytes)} usable {where}{better})"
            )
            return _result(candidate, True, context, why, tuple(tried))
        tried.append(candidate)
    last = options[-1]
    why = (
        f"nothing fits, not even {last.level}: it needs {format_gb(last.needed)} (weights "
        f"{format_gb(last.weights_bytes)} + KV cache {format_gb(last.kv_bytes)}) but "
        f"{format_gb(usable_bytes)} is usable {where}; choose a smaller model or a shorter context"
    )
    return _result(last, False, context, why, tuple(tried[:-1]))


def _result(
    option: LevelFit, fits: bool, context: int, why: str, tried: tuple[LevelFit, ...] = ()
) -> AutoLevel:
    level = None if option.level == AS_PUBLISHED else option.level
    return AutoLevel(
        level,
        option.bits,
        fits,
        option.weights_bytes,
        option.kv_bytes,
        option.usable_bytes,
        context,
        f"auto → {option.level}: {why}",
        tried,
    )
