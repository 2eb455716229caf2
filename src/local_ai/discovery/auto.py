"""`quantize = "auto"`: the quantize level a model gets on this machine, and why.

Pure (no I/O), so the planner can call it with what it already has: the manifest entry, the
resolved source (``LockedModel``: sizes, source precision, KV-cache shape) and the usable memory
of the machine. Weights are sized exactly as the planner sizes them (``planner.target_bits``),
so the level chosen here is one the planner's memory check accepts.

Candidates, best quality first: bf16, q8, q6, q5, q4, q3, q2. Mixed recipes and mxfp4 are
never chosen automatically (name them explicitly), except mxfp4 for a source already in mxfp4.
A level above the source precision is never chosen (no upcasting); an MLX source that already
fits at its own precision is served as published (``level`` None: nothing to convert).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from local_ai.manifest.models import ModelSpec

# A module import: the planner imports this module, so names are looked up at call time.
from local_ai.reconcile import planner as _planner

if TYPE_CHECKING:
    from local_ai.reconcile.model import LockedModel

GIB = 1024**3
AUTO_LEVELS: tuple[str, ...] = ("bf16", "q8", "q6", "q5", "q4", "q3", "q2")
# Assumed when the source's precision is unknown (safetensors without a quantization block).
DEFAULT_SOURCE_BITS = 16.0
AS_PUBLISHED = "as published"


def level_bits(level: str, group_size: int = 64) -> float:
    """Bits per weight of a concrete level, exactly as the planner sizes it."""
    spec = ModelSpec.model_construct(quantize=level, group_size=group_size)  # type: ignore[arg-type]
    bits = _planner.target_bits(spec)
    if bits is None:
        raise ValueError(f"{level!r} is not a concrete quantize level")
    return bits


def candidate_levels(source_level: str | None = None) -> tuple[str, ...]:
    """AUTO_LEVELS, plus the source's own level when it is a concrete one other than those
    (an mxfp4 model is kept in mxfp4 rather than requantized)."""
    from local_ai.manifest.models import QUANTIZE_LEVELS

    extra = source_level in QUANTIZE_LEVELS and source_level not in (*AUTO_LEVELS, "auto")
    if not extra or source_level is None:
        return AUTO_LEVELS
    return tuple(sorted((*AUTO_LEVELS, source_level), key=lambda lv: -level_bits(lv)))


def allowed(level: str, source_bits: float, group_size: int = 64) -> bool:
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
    served as published. ``reason`` is one line for the plan, e.g.
    ``auto → q4: the best quality that fits (needs 19.3 GB of 21.4 GB usable at 32k context;
    q5 would need 22.8 GB)``.
    """

    level: str | None
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
        return self.level or "as published"


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GB"


def _ctx(context: int) -> str:
    return f"{context // 1024}k" if context % 1024 == 0 else f"{context:,}"


def choose_level(
    source_bytes: int,
    source_bits: float,
    kv_bytes: int,
    usable_bytes: int,
    *,
    context: int,
    group_size: int = 64,
    source_is_mlx: bool = False,
    source_level: str | None = None,
) -> AutoLevel:
    """The highest-quality level whose weights (``source_bytes * level_bits / source_bits``,
    the planner's estimate) plus ``kv_bytes`` fit in ``usable_bytes``.

    When nothing fits, the smallest allowed level is returned with ``fits`` False, so the
    planner's memory check reports the shortfall. ``usable_bytes`` <= 0 means unknown: the
    best allowed level is taken (nothing to compare against). ``source_level`` names the
    source's own level when it has one (``mxfp4``): it is then a candidate too.
    """
    if source_bytes < 0 or source_bits <= 0 or kv_bytes < 0:
        raise ValueError("source_bytes and kv_bytes must be >= 0 and source_bits > 0")
    where = f"at {_ctx(context)} context"

    def option(level: str) -> LevelFit:
        bits = level_bits(level, group_size)
        weights = int(source_bytes * bits / source_bits)
        return LevelFit(level, bits, weights, kv_bytes, usable_bytes)

    levels = candidate_levels(source_level)
    allowed_levels = [lv for lv in levels if allowed(lv, source_bits, group_size)]
    if source_is_mlx:
        # Served as published first; requantizing only to levels below its own precision.
        as_is = LevelFit(AS_PUBLISHED, source_bits, source_bytes, kv_bytes, usable_bytes)
        lower = [lv for lv in allowed_levels if level_bits(lv, group_size) < source_bits - 1e-6]
        fits_list = [as_is, *(option(lv) for lv in lower)]
    else:
        fits_list = [option(lv) for lv in allowed_levels or [levels[-1]]]
    if usable_bytes <= 0:
        best = fits_list[0]
        return _result(best, True, context, "the best quality allowed (usable memory unknown)")
    tried: list[LevelFit] = []
    for candidate in fits_list:
        if candidate.fits:
            better = ""
            if tried:
                better = f"; {tried[-1].level} would need {_gb(tried[-1].needed)}"
            why = (
                f"the best quality that fits (needs {_gb(candidate.needed)} of "
                f"{_gb(usable_bytes)} usable {where}{better})"
            )
            return _result(candidate, True, context, why, tuple(tried))
        tried.append(candidate)
    last = fits_list[-1]
    why = (
        f"nothing fits, not even {last.level}: it needs {_gb(last.needed)} (weights "
        f"{_gb(last.weights_bytes)} + KV cache {_gb(last.kv_bytes)}) but {_gb(usable_bytes)} "
        f"is usable {where}; choose a smaller model or a shorter context"
    )
    return _result(last, False, context, why, tuple(tried[:-1]))


def _result(
    option: LevelFit, fits: bool, context: int, why: str, tried: tuple[LevelFit, ...] = ()
) -> AutoLevel:
    level = None if option.level == AS_PUBLISHED else option.level
    return AutoLevel(
        level,
        fits,
        option.weights_bytes,
        option.kv_bytes,
        option.usable_bytes,
        context,
        f"auto → {option.level}: {why}",
        tried,
    )


def resolve_auto(spec: ModelSpec, source: LockedModel, usable_memory: int) -> AutoLevel:
    """The concrete level for ``spec`` (``quantize = "auto"``) given its resolved ``source``
    and the machine's usable memory in bytes (``Observed.usable_memory``, i.e.
    ``Hardware.usable_memory_bytes``).

    The planner then plans with ``spec.model_copy(update={"quantize": result.level})`` (or
    ``None`` when ``level`` is None: serve as published) and shows ``result.reason``.
    """
    source_bits = source.source_bits or DEFAULT_SOURCE_BITS
    kv = _planner.kv_bytes(spec, source)
    return choose_level(
        source.total_bytes,
        source_bits,
        kv,
        usable_memory,
        context=spec.context,
        group_size=spec.group_size,
        source_is_mlx=source.format == "mlx",
        source_level=source.source_quantization,
    )
