"""`quantize = "auto"` (local_ai.sizing, through the planner): the level chosen for simulated
Macs, sized as the planner sizes it."""

from __future__ import annotations

import pytest

from local_ai import sizing
from local_ai.hardware import GIB, simulated
from local_ai.manifest.models import ModelSpec
from local_ai.manifest.source import ResolvedSource, SourceFile
from local_ai.reconcile import planner
from local_ai.reconcile.model import SourceView

# Qwen3-Coder-30B-A3B in bf16: 30.5B parameters, 48 layers, 4 KV heads of 128.
CODER_BYTES = 30_532_122_624 * 2


def coder(
    fmt: str = "safetensors", bits: float | None = 16.0, total: int = CODER_BYTES
) -> SourceView:
    source = ResolvedSource(
        "coder",
        "repo",
        fmt,  # type: ignore[arg-type]
        (SourceFile("model.safetensors", total, "0" * 64),),
        repo="Qwen/Qwen3-Coder-30B-A3B-Instruct",
        commit="a" * 40,
    )
    return SourceView(
        source,
        source_bits=bits,
        num_layers=48,
        num_kv_heads=4,
        head_dim=128,
    )


SPEC = ModelSpec(repo="Qwen/Qwen3-Coder-30B-A3B-Instruct", quantize="auto")


@pytest.mark.parametrize(
    ("total_gb", "level", "fits"),
    [
        (8, "q2", False),  # 3 GiB usable: nothing fits, the smallest level is reported
        (16, "q2", False),  # 9.7 GiB usable; q2 needs 11.9 GiB
        (24, "q2", True),  # 15.0 GiB usable
        (36, "q5", True),  # 22.8 GiB usable; q6 would need 26.1
        (64, "q8", True),  # 45.6 GiB usable; bf16 would need 59.8
        (128, "bf16", True),  # 91.2 GiB usable
    ],
)
def test_auto_level_for_simulated_macs(total_gb: int, level: str, fits: bool) -> None:
    hw = simulated(total_gb)
    result = planner.auto_level(SPEC, coder(), hw.usable_memory_bytes)
    assert (result.level, result.fits) == (level, fits)
    assert result.reason.startswith(f"auto → {level}: ")
    assert "32k context" in result.reason
    # The planner sizes the chosen level exactly as auto did: its memory check agrees.
    concrete = SPEC.model_copy(update={"quantize": level})
    footprint = planner.estimated_weights(concrete, coder()) + planner.kv_bytes(concrete, coder())
    assert footprint == result.needed
    assert (footprint <= hw.usable_memory_bytes) is fits
    # Every better level that was tried really does not fit.
    assert all(t.needed > hw.usable_memory_bytes for t in result.tried)


def test_reason_names_the_rejected_better_level() -> None:
    result = planner.auto_level(SPEC, coder(), simulated(36).usable_memory_bytes)
    assert result.reason == (
        "auto → q5: the best quality that fits (needs 22.5 GB of 22.8 GB usable at 32k "
        "context; q6 would need 26.1 GB)"
    )
    assert [t.level for t in result.tried] == ["bf16", "q8", "q6"]


def test_nothing_fits_says_what_is_short() -> None:
    result = planner.auto_level(SPEC, coder(), simulated(16).usable_memory_bytes)
    assert not result.fits
    assert "nothing fits, not even q2" in result.reason
    assert "9.7 GB is usable" in result.reason


def test_longer_context_lowers_the_level() -> None:
    usable = simulated(36).usable_memory_bytes
    short = planner.auto_level(SPEC.model_copy(update={"context": 4096}), coder(), usable)
    long = planner.auto_level(SPEC.model_copy(update={"context": 131072}), coder(), usable)
    assert (short.level, long.level) == ("q5", "q2")  # KV cache: 0.4 GiB vs 12 GiB
    assert "128k context" in long.reason


def test_never_upcasts_a_quantized_source() -> None:
    # A GGUF at Q4_K_M (4.85 bits) on a big machine: q4 at most, never q8 or bf16.
    gguf = coder("gguf", 4.85, total=int(30.5e9 * 4.85 / 8))
    result = planner.auto_level(SPEC, gguf, simulated(128).usable_memory_bytes)
    assert result.level == "q4"


def test_mlx_source_that_fits_is_served_as_published() -> None:
    mlx = coder("mlx", 4.5, total=int(30.5e9 * 4.5 / 8))
    big = planner.auto_level(SPEC, mlx, simulated(64).usable_memory_bytes)
    assert big.level is None and big.fits and big.label == "as published"
    assert big.reason.startswith("auto → as published: ")
    small = planner.auto_level(SPEC, mlx, simulated(28).usable_memory_bytes)
    assert small.level == "q3"  # requantized below its own 4 bits to fit 17.7 GiB
    assert [t.level for t in small.tried] == ["as published"]


def test_unknown_source_precision_is_taken_as_16_bits() -> None:
    result = planner.auto_level(SPEC, coder(bits=None), simulated(64).usable_memory_bytes)
    assert result.level == "q8"


def test_mxfp4_source_keeps_its_own_level_as_a_candidate() -> None:
    choice = sizing.choose_level(
        int(20e9 * 4.25 / 8), 4.25, 1 * GIB, 40 * GIB, context=32768, source_level="mxfp4"
    )
    assert choice.level == "mxfp4"
    without = sizing.choose_level(int(20e9 * 4.25 / 8), 4.25, 1 * GIB, 40 * GIB, context=32768)
    assert without.level == "q3"  # q4 (4.5 bits) would upcast


def test_group_size_changes_the_bits() -> None:
    assert sizing.level_bits("q4", 64) == 4.5
    assert sizing.level_bits("q4", 32) == 5.0
    with pytest.raises(ValueError, match="not a concrete"):
        sizing.level_bits("auto")


def test_unknown_memory_takes_the_best_allowed_level() -> None:
    result = planner.auto_level(SPEC, coder(), 0)
    assert result.level == "bf16" and "usable memory unknown" in result.reason
