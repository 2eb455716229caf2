"""Quantization recipes: what a `--quantize` level means in mlx-lm's terms.

Pure data, no heavy imports; the planner and the CLI use it to validate and to identify a
conversion (its JSON form is part of the store digest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from local_ai.errors import LocalAIError, NotYetError
from local_ai.sizing import AFFINE_BITS as AFFINE_BITS  # re-exported: recipe_for uses it
from local_ai.sizing import DEFAULT_GROUP_SIZE

MIXED_RECIPES: Final = ("mixed_3_6", "mixed_4_6")  # mlx-lm's quant predicates of those names
FLOAT_LEVELS: Final[dict[str, str]] = {"bf16": "bfloat16", "fp16": "float16"}
GROUP_SIZES: Final = (32, 64, 128)
LEVELS: Final[tuple[str, ...]] = (*AFFINE_BITS, "mxfp4", *MIXED_RECIPES, *FLOAT_LEVELS)
Dtype = Literal["bfloat16", "float16", "float32"]
DTYPES: Final[tuple[str, ...]] = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Recipe:
    """One conversion target. ``dtype`` is the precision of everything not quantized (norms,
    biases, scales); None means "as the source": config ``torch_dtype`` for safetensors, BF16 if
    the GGUF stores any BF16 tensor and F16 otherwise."""

    level: str
    group_size: int | None = None  # None for levels without groups (bf16, fp16, mxfp4)
    dtype: Dtype | None = None

    @property
    def quantized(self) -> bool:
        return self.level not in FLOAT_LEVELS

    @property
    def bits(self) -> int | None:
        if self.level in AFFINE_BITS:
            return AFFINE_BITS[self.level]
        if self.level == "mxfp4":
            return 4
        return None

    @property
    def mode(self) -> str:
        return "mxfp4" if self.level == "mxfp4" else "affine"

    @property
    def mixed(self) -> str | None:
        """mlx-lm's quant predicate name for mixed recipes."""
        return self.level if self.level in MIXED_RECIPES else None

    @property
    def target_dtype(self) -> Dtype | None:
        if self.level in FLOAT_LEVELS:
            return FLOAT_LEVELS[self.level]  # type: ignore[return-value]
        return self.dtype

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "group_size": self.group_size, "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        return cls(str(data["level"]), data.get("group_size"), data.get("dtype"))

    def describe(self) -> str:
        if not self.quantized:
            return self.level
        if self.group_size is None:
            return self.level
        return f"{self.level} (group size {self.group_size})"


def make_recipe(level: str, group_size: int | None = None, dtype: str | None = None) -> Recipe:
    """Validate a level as the manifest and the CLI spell it. ``group_size`` None means the
    default (64) where groups apply; giving one where none applies is an error."""
    if level == "auto":
        raise NotYetError(
            "--quantize auto is not available yet: local-ai does not choose a level for your "
            "machine yet",
            hint=f"pick one of: {', '.join(LEVELS)} (q4 is a good default for 16 GB Macs)",
        )
    if level not in LEVELS:
        raise LocalAIError(
            f"unknown quantization level {level!r}", hint=f"choose one of: {', '.join(LEVELS)}"
        )
    if dtype is not None and dtype not in DTYPES:
        raise LocalAIError(f"unknown dtype {dtype!r}", hint=f"choose one of: {', '.join(DTYPES)}")
    grouped = level in AFFINE_BITS or level in MIXED_RECIPES
    if grouped:
        size = DEFAULT_GROUP_SIZE if group_size is None else group_size
        if size not in GROUP_SIZES:
            raise LocalAIError(
                f"group size {size} is not supported",
                hint=f"choose one of: {', '.join(map(str, GROUP_SIZES))}",
            )
        return Recipe(level, size, dtype)  # type: ignore[arg-type]
    if group_size is not None and not (level == "mxfp4" and group_size == 32):
        raise LocalAIError(
            f"--group-size does not apply to {level}",
            hint="mxfp4 always uses groups of 32; bf16 and fp16 are not quantized",
        )
    return Recipe(level, 32 if level == "mxfp4" else None, dtype)  # type: ignore[arg-type]
