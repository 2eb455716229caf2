"""local_ai.sizing: bits per weight, KV-cache bytes and the `quantize = "auto"` level, pinned as
data, and one answer across the entry points (plan, search ranking, `models convert`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local_ai import hardware, sizing
from local_ai.cli import models_convert
from local_ai.discovery import names
from local_ai.discovery.ranking import Variant, assess
from local_ai.hardware import GIB, simulated
from local_ai.manifest.models import QUANTIZE_LEVELS, ModelSpec
from local_ai.manifest.source import ResolvedSource, SourceFile
from local_ai.reconcile import observe, planner

# ---- bits per weight ------------------------------------------------------------------------


def test_ggml_geometry_is_gguf_s_own() -> None:
    """Every tensor type's block geometry matches gguf-py's GGML_QUANT_SIZES, by id and name."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for type_id, ours in sizing.GGML_TYPES.items():
        theirs = GGMLQuantizationType(type_id)
        assert theirs.name == ours.name
        assert GGML_QUANT_SIZES[theirs] == (ours.block_size, ours.type_size), ours.name


@pytest.mark.parametrize(
    ("label", "bits"),
    [
        # One tensor type: its block geometry.
        ("Q8_0", 8.5),
        ("Q6_K", 6.5625),  # 210 bytes per 256 weights
        ("Q5_1", 6.0),
        ("Q5_0", 5.5),
        ("Q4_1", 5.0),
        ("Q4_0", 4.5),
        ("MXFP4", 4.25),
        ("TQ2_0", 2.0625),
        ("BF16", 16.0),
        ("F16", 16.0),
        ("F32", 32.0),
        # llama-quantize's mixes: llama.cpp's measurement on Llama-3.1-8B.
        ("Q5_K_M", 5.7036),
        ("Q5_K_S", 5.5704),
        ("Q4_K_M", 4.8944),
        ("Q4_K_S", 4.6672),
        ("Q3_K_L", 4.2979),
        ("Q3_K_M", 4.0001),
        ("Q3_K_S", 3.6429),
        ("Q2_K", 3.1593),
        ("IQ4_XS", 4.4597),
        ("IQ2_XXS", 2.3824),
        ("IQ1_S", 2.0042),
        # Aliases, unsloth's labels, case.
        ("Q4_K", 4.8944),  # llama-quantize: alias for Q4_K_M
        ("UD-Q4_K_XL", 4.8944),
        ("Q6_K_XL", 6.5625),
        ("q8_0", 8.5),
        ("Q9_Z", None),
        ("GGUF", None),
    ],
)
def test_gguf_bits(label: str, bits: float | None) -> None:
    assert sizing.gguf_bits(label) == bits


def test_gguf_file_names_use_the_same_bits() -> None:
    assert names.gguf_quant("Qwen3-8B-Q6_K.gguf") == names.QuantLabel("Q6_K", 6.5625)
    assert names.gguf_quant("Q4_K_M/GLM-4.5-Air-Q4_K_M-00001-of-00002.gguf") == (
        names.QuantLabel("Q4_K_M", 4.8944)
    )
    assert names.gguf_quant("model-UD-Q4_K_XL.gguf") == names.QuantLabel("UD-Q4_K_XL", 4.8944)


@pytest.mark.parametrize(
    ("level", "group_size", "bits"),
    [
        ("q2", 64, 2.5),
        ("q3", 64, 3.5),
        ("q4", 64, 4.5),
        ("q4", 32, 5.0),
        ("q4", 128, 4.25),
        ("q5", 64, 5.5),
        ("q6", 64, 6.5),
        ("q8", 64, 8.5),
        ("q8", 32, 9.0),
        ("mxfp4", 64, 4.25),  # group size is mxfp4's own (32, one 8-bit scale)
        ("mixed_3_6", 64, 4.0),
        ("mixed_4_6", 64, 5.0),
        ("bf16", 64, 16.0),
        ("fp16", 64, 16.0),
    ],
)
def test_level_bits(level: str, group_size: int, bits: float) -> None:
    assert sizing.level_bits(level, group_size) == bits


def test_concrete_levels_are_the_manifest_s() -> None:
    assert set(sizing.CONCRETE_LEVELS) == set(QUANTIZE_LEVELS) - {"auto"}
    with pytest.raises(ValueError, match="not a concrete"):
        sizing.level_bits("auto")


@pytest.mark.parametrize(
    ("bits", "group", "mode", "expected"),
    [
        (4, 64, "affine", 4.5),
        (4, None, None, 4.5),
        (8, 32, None, 9.0),
        (4, 32, "mxfp4", 4.25),  # not 4 + 32/32: one 8-bit scale per 32
        (4, 16, "nvfp4", 4.5),
        (8, 32, "mxfp8", 8.25),
        (None, 64, None, None),
        (4, 64, "unknown-mode", None),
    ],
)
def test_mlx_quant_bits(
    bits: int | None, group: int | None, mode: str | None, expected: float | None
) -> None:
    assert sizing.mlx_quant_bits(bits, group, mode) == expected


def test_weights_count_weight_files_only() -> None:
    files = [("model.safetensors", 1000), ("tokenizer.json", 50), ("m-Q4_0.GGUF", 7)]
    assert sizing.weight_bytes(files) == 1007
    assert sizing.weights_at(1600, 16.0, 4.5) == 450
    assert sizing.weights_at(1600, None, 4.5) == 1600  # unknown source precision: as is
    assert sizing.weights_at(1600, 16.0, None) == 1600  # no conversion


# ---- KV cache -------------------------------------------------------------------------------


def test_kv_cache_bytes_qwen3_30b_a3b() -> None:
    # Qwen3-30B-A3B: 48 layers, 4 KV heads, head_dim 128; 32768 tokens of fp16 K and V.
    expected = 48 * 2 * 4 * 128 * 32768 * 2
    assert sizing.kv_cache_bytes(48, 4, 128, 32768) == expected == 3 * GIB
    assert sizing.kv_cache_bytes(48, 4, 128, 32768, bytes_per_elem=1) == 1.5 * GIB
    assert sizing.kv_cache_bytes(48, 4, 128, 32768, bytes_per_elem=0.5) == 0.75 * GIB
    assert sizing.kv_cache_bytes(48, 4, 128, 65536) == 6 * GIB
    assert sizing.kv_cache_bytes(1, 1, 1, 1, bytes_per_elem=0.1) == 1  # rounded up
    assert sizing.kv_cache_bytes(48, 4, 128, 0) == 0
    with pytest.raises(ValueError, match="context"):
        sizing.kv_cache_bytes(48, 4, 128, -1)


QWEN3_CODER = {
    "model_type": "qwen3_moe",
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "hidden_size": 2048,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (QWEN3_CODER, (48, 4, 128)),
        # No head_dim: hidden / heads; no KV heads: as many as attention heads.
        ({"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096}, (32, 32, 128)),
        ({"n_layer": 24, "n_head": 16, "n_embd": 2048}, (24, 16, 128)),
        # DeepSeek V3 MLA: one latent of kv_lora_rank + rope dims, counted as K+V halves.
        (
            {"num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64},
            (61, 1, 288),
        ),
        # Multimodal wrappers keep the language model's shape in text_config.
        ({"text_config": QWEN3_CODER}, (48, 4, 128)),
        ({"num_hidden_layers": 4}, None),
        ({}, None),
    ],
)
def test_shape_from_config(config: dict[str, Any], shape: tuple[int, int, int] | None) -> None:
    expected = sizing.ArchShape(*shape) if shape else None
    assert sizing.shape_from_config(config) == expected


@pytest.mark.parametrize(
    ("params", "layers"), [(None, 36), (1e9, 28), (8e9, 36), (30e9, 48), (70e9, 64), (400e9, 96)]
)
def test_estimated_shape_by_size(params: float | None, layers: int) -> None:
    shape = sizing.estimated_shape(int(params) if params else None)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim, shape.estimated) == (
        layers,
        8,
        128,
        True,
    )


def test_convert_peak() -> None:
    assert sizing.convert_peak_bytes(4 * GIB, 20 * GIB) == 7 * GIB


# ---- one `auto` answer across entry points --------------------------------------------------

CODER_PARAMS = 30_532_122_624
SOURCES: dict[str, tuple[dict[str, Any], float]] = {
    # name: (config.json, bytes per parameter on disk)
    "bf16": (QWEN3_CODER, 2.0),
    "fp8": ({**QWEN3_CODER, "quantization_config": {"quant_method": "fp8"}}, 1.0),
    "mxfp4": ({**QWEN3_CODER, "quantization_config": {"quant_method": "mxfp4"}}, 4.25 / 8),
}
MACHINES = (16, 24, 32, 36, 40, 48, 64, 96, 128, 192)
CONTEXTS = (4096, 32768, 131072)


def _model_dir(root: Path, name: str) -> tuple[Path, int]:
    config, per_param = SOURCES[name]
    directory = root / name
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config), "utf-8")
    return directory, int(CODER_PARAMS * per_param)


def _files(weights: int) -> tuple[tuple[str, int], ...]:
    # Two weight shards and a tokenizer: only the shards count.
    return (
        ("model-00001-of-00002.safetensors", weights // 2),
        ("model-00002-of-00002.safetensors", weights - weights // 2),
        ("tokenizer.json", 11_422_654),
    )


def _plan_level(directory: Path, weights: int, context: int, usable: int) -> str | None:
    """What plan/apply choose: observe's view of a local path, then the planner's auto."""
    files = tuple(SourceFile(n, s, sha256="0" * 64) for n, s in _files(weights))
    source = ResolvedSource("m", "path", "safetensors", files, path=str(directory))
    spec = ModelSpec(path=str(directory), quantize="auto", context=context)
    locked = observe._view_of(source)
    chosen = planner.auto_level(spec, locked, usable)
    return chosen.level if chosen.fits else None


def _search_level(directory: Path, weights: int, context: int, hw: hardware.Hardware) -> str | None:
    """What search and `models add` choose for the same repo: ranking's assessment."""
    config = json.loads((directory / "config.json").read_text("utf-8"))
    variant = Variant(
        repo="Qwen/Qwen3-Coder-30B-A3B-Instruct",
        format="safetensors",
        quant=names.config_quant(config),
        size_bytes=sum(s for _, s in _files(weights)),
        weights_bytes=weights,
        group="qwen3-coder-30b-a3b-instruct",
        base_model="Qwen/Qwen3-Coder-30B-A3B-Instruct",
        params=CODER_PARAMS,
        shape=sizing.shape_from_config(config),
    )
    assessed = assess(variant, hw, context)
    return assessed.quantize if assessed.fits else None


def _convert_level(
    directory: Path, weights: int, context: int, hw: hardware.Hardware, monkeypatch: Any
) -> str | None:
    """What `models convert --quantize auto` chooses, on a machine like ``hw``."""
    from local_ai.errors import LocalAIError

    monkeypatch.setattr(hardware, "detect", lambda: hw)
    files = tuple(SourceFile(n, s) for n, s in _files(weights))
    src = ResolvedSource("m", "path", "safetensors", files, path=str(directory))
    try:
        level, _ = models_convert._auto_level(src, directory, None, context)
    except LocalAIError:
        return None
    return level


def test_plan_search_and_convert_choose_the_same_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[tuple[str, int, int], str | None] = {}
    for name in SOURCES:
        directory, weights = _model_dir(tmp_path, name)
        for total_gb in MACHINES:
            hw = simulated(total_gb)
            for context in CONTEXTS:
                plan = _plan_level(directory, weights, context, hw.usable_memory_bytes)
                search = _search_level(directory, weights, context, hw)
                convert = _convert_level(directory, weights, context, hw, monkeypatch)
                where = f"{name} on {total_gb} GB at {context}"
                assert plan == search == convert, where
                seen[(name, total_gb, context)] = plan
    # The matrix exercises the whole ladder (a constant answer would agree trivially).
    missing = {None, "q2", "q3", "q4", "q5", "q6", "q8", "bf16", "mxfp4"} - set(seen.values())
    assert not missing, seen
    # Never upcast: the fp8 source is never bf16, the mxfp4 one never above mxfp4.
    fp8 = {seen[("fp8", gb, c)] for gb in MACHINES for c in CONTEXTS}
    mxfp4 = {seen[("mxfp4", gb, c)] for gb in MACHINES for c in CONTEXTS}
    assert "q8" in fp8 and "bf16" not in fp8
    assert mxfp4 <= {None, "q2", "q3", "mxfp4"}


@pytest.mark.parametrize(
    ("total_gb", "context", "level"),
    [
        (24, 32768, "q2"),
        (36, 4096, "q5"),
        (36, 32768, "q5"),
        (36, 131072, "q2"),
        (40, 32768, "q6"),
        (48, 32768, "q8"),
        (48, 131072, "q5"),
        (64, 32768, "q8"),
        (128, 32768, "bf16"),
        (16, 32768, None),  # nothing fits
    ],
)
def test_auto_level_for_qwen3_coder_bf16(
    tmp_path: Path, total_gb: int, context: int, level: str | None
) -> None:
    """Pinned: Qwen3-Coder-30B-A3B (bf16, 48 layers x 4 KV heads x 128) on simulated Macs."""
    directory, weights = _model_dir(tmp_path, "bf16")
    assert _plan_level(directory, weights, context, simulated(total_gb).usable_memory_bytes) == (
        level
    )


# ---- `local-ai init` suggests what `plan` accepts --------------------------------------------


@pytest.mark.parametrize(
    ("total_gb", "repos"),
    [
        (8, ["Qwen3-4B-4bit"]),
        (16, ["Qwen3-8B-4bit"]),
        (24, ["Qwen3-8B-4bit"]),
        (32, ["Qwen3-8B-4bit", "Qwen3-4B-4bit"]),
        (36, ["Qwen3-Coder-30B-A3B-Instruct-4bit"]),
        (48, ["Qwen3-Coder-30B-A3B-Instruct-4bit", "Qwen3-4B-4bit"]),
        (64, ["Qwen3-Coder-30B-A3B-Instruct-8bit"]),
        (128, ["Qwen3-Coder-30B-A3B-Instruct-8bit", "Qwen3-4B-4bit"]),
    ],
)
def test_init_suggestions_fit_as_plan_sizes_them(total_gb: int, repos: list[str]) -> None:
    from local_ai.manifest.template import suggest_models
    from local_ai.reconcile.model import SourceView

    usable = simulated(total_gb).usable_memory_bytes
    picks = suggest_models(usable)
    assert [p.repo.split("/")[1] for p in picks] == repos
    footprints = []
    for pick in picks:
        shape = pick.shape
        weights = int(pick.approx_gb * 1000**3)
        files = (SourceFile("model.safetensors", weights), SourceFile("tokenizer.json", 10**7))
        source = SourceView(
            ResolvedSource(pick.alias, "repo", "mlx", files, repo=pick.repo, commit="c" * 40),
            source_bits=4.5,
            num_layers=shape.num_layers,
            num_kv_heads=shape.num_kv_heads,
            head_dim=shape.head_dim,
        )
        spec = ModelSpec(repo=pick.repo, context=pick.context)
        footprint = planner.estimated_weights(spec, source) + planner.kv_bytes(spec, source)
        assert footprint == pick.needed_bytes
        footprints.append(footprint)
    assert sum(footprints) <= usable  # the fast model only joins when both fit
