"""GGUF -> MLX: every supported architecture round-trips through llama.cpp's layout.

Oracles, from strongest to loosest:

* the converted model's parameters equal, bit for bit, those ``mlx_lm.load`` gives for an HF
  directory holding the GGUF's values as gguf-py dequantizes them (mapped back by the harness,
  not by local_ai.convert), stored in the same dtype;
* next-token logits against the original fp32 HF model, within the tolerances measured for each
  GGUF type (docs/conversion.md);
* converting a GGUF to a quantized level gives the same bytes as mlx-lm's own conversion of the
  dequantized weights (mlx-lm decides which layers are quantized and how).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from local_ai.convert.archs import ARCHS
from local_ai.convert.chat_template import render_chat_template
from local_ai.convert.gguf_reader import read_gguf
from local_ai.convert.gguf_to_mlx import convert_gguf, inspect_gguf
from local_ai.convert.recipe import LEVELS, Recipe, make_recipe
from local_ai.convert.safetensors_to_mlx import convert_safetensors
from tests.convert_helpers import (
    MESSAGES,
    TEXT,
    WIDE,
    assert_same_parameters,
    assert_same_weights,
    compare,
    dequantized_reference,
    load_model,
    logits,
    model_parameters,
    prompt_ids,
    wide_models,
)
from tests.harness import gguf_export as ge
from tests.harness import tinymodels as tm

__all__ = ["wide_models"]  # the fixture, imported for pytest

ARCHS_UNDER_TEST = tm.ARCHITECTURES
ROUND_TRIP_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")
OTHER_TYPES = ("F32", "BF16", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K")
# Logits of the fp16 conversion against the original fp32 model, over all five archs and both
# prompts. Measured worst case (docs/conversion.md) -> limit. F16/Q8_0 bound the largest
# difference; lower-bit types bound rms(diff)/rms(logits), since they differ by the GGUF's own
# quantization error, which the tiny random models amplify.
MAX_ABS = {"F16": 0.05, "Q8_0": 0.6}  # measured 0.016, 0.285
REL_RMS = {"Q8_0": 0.04, "Q6_K": 0.2, "Q4_0": 0.55, "Q4_K": 0.6}  # 0.021 0.123 0.382 0.400
TOP1 = {"F16": 0.95, "Q8_0": 0.95}  # measured 0.98 (a near-tie flips), 0.98
# DeepSeek-V3 (3 layers, YaRN's 1.87x sharper attention, grouped top-k routing where one flipped
# group choice swaps both experts) amplifies the same GGUF errors more: own limits, measured
# values in docs/conversion.md. F16 (no routing flips) keeps the common limit.
DEEPSEEK_Q8 = 0.07  # mlx-lm q8 of the F16 GGUF: measured 0.044
ARCH_LIMITS: dict[str, dict[str, dict[str, float]]] = {
    "deepseek_v3": {
        "max_abs": {"Q8_0": 1.0},  # measured 0.630
        "rel_rms": {"Q8_0": 0.07, "Q6_K": 0.3, "Q4_0": 0.8, "Q4_K": 0.8},  # .042 .184 .635 .592
        "top1": {"Q8_0": 0.9},  # 0.957
    }
}
CHUNK = 4096  # values per read in tests, so every tensor (Q/K included) spans several chunks


@pytest.fixture(scope="module")
def original(wide_models: dict[str, Path]) -> dict[str, tuple[list[list[int]], np.ndarray]]:
    out = {}
    for arch, path in wide_models.items():
        ids = prompt_ids(path)
        out[arch] = (ids, logits(path, ids))
    return out


@pytest.fixture(scope="module")
def gguf_file(
    wide_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Path]:
    root = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}

    def make(arch: str, qtype: str) -> Path:
        if (arch, qtype) not in cache:
            out = root / f"{arch}-{qtype}.gguf"
            cache[arch, qtype] = ge.export_gguf(wide_models[arch], out, qtype)
        return cache[arch, qtype]

    return make


def convert(source: Path, out: Path, recipe: Recipe, **kwargs: Any) -> Path:
    out.mkdir(parents=True)
    convert_gguf(source, out, recipe, chunk_elements=CHUNK, **kwargs)
    return out


@pytest.mark.parametrize("qtype", ROUND_TRIP_TYPES)
@pytest.mark.parametrize("arch", ARCHS_UNDER_TEST)
def test_round_trip_matches_dequantized_weights_and_original_logits(
    arch: str,
    qtype: str,
    wide_models: dict[str, Path],
    gguf_file: Callable[[str, str], Path],
    original: dict[str, tuple[list[list[int]], np.ndarray]],
    tmp_path: Path,
) -> None:
    source = gguf_file(arch, qtype)
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    reference = dequantized_reference(wide_models[arch], source, tmp_path / "ref")
    model = load_model(out)
    assert_same_parameters(model_parameters(model), model_parameters(reference))

    ids, want = original[arch]
    got = compare(logits(model, ids), want)
    limits = ARCH_LIMITS.get(arch, {})
    max_abs = MAX_ABS | limits.get("max_abs", {})
    rel_rms = REL_RMS | limits.get("rel_rms", {})
    top1 = TOP1 | limits.get("top1", {})
    if qtype in max_abs:
        assert got["max_abs"] <= max_abs[qtype], got
    if qtype in rel_rms:
        assert got["rel_rms"] <= rel_rms[qtype], got
    if qtype in top1:
        assert got["top1"] >= top1[qtype], got


@pytest.mark.parametrize("qtype", OTHER_TYPES)
def test_every_other_tensor_type_dequantizes_exactly(
    qtype: str, wide_models: dict[str, Path], gguf_file: Callable[[str, str], Path], tmp_path: Path
) -> None:
    source = gguf_file("qwen3", qtype)
    assert qtype in inspect_gguf(source)["tensor_types"]  # really stored in that type
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    reference = dequantized_reference(wide_models["qwen3"], source, tmp_path / "ref")
    assert_same_parameters(model_parameters(out), model_parameters(reference))


# Types gguf-py dequantizes but cannot quantize: the test writes random (valid) blocks.
RANDOM_BLOCK_TYPES = (
    "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
    "TQ1_0", "TQ2_0", "MXFP4", "NVFP4",
)  # fmt: skip


def _random_blocks(qtype: Any, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """``n_blocks`` random blocks of ``qtype`` whose values are finite and small (random scale
    bytes are often huge or NaN in fp16/e8m0, so such blocks are drawn again)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n_blocks:
        cand = rng.integers(0, 256, (4 * n_blocks, size), dtype=np.uint8)
        with np.errstate(all="ignore"):
            values = gguf.quants.dequantize(cand, qtype).reshape(len(cand), block)
        ok = np.isfinite(values).all(axis=1) & (np.abs(values).max(axis=1) <= 16)
        kept.append(cand[ok])
    return np.concatenate(kept)[:n_blocks]


def test_iq_tq_and_fp4_types_dequantize_exactly(
    wide_models: dict[str, Path], gguf_file: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """Every matrix of one file stored in a different IQ/TQ/FP4 type (random blocks: gguf-py
    has no quantizer for them), converted: the same values as gguf-py's dequantization."""
    import gguf

    src = gguf_file("qwen3", "F16")
    rng = np.random.default_rng(7)
    reader = gguf.GGUFReader(str(src))
    matrices = [t for t in reader.tensors if len(t.shape) == 2]
    assert len(matrices) >= len(RANDOM_BLOCK_TYPES)
    raw = {}
    for t, name in zip(matrices, RANDOM_BLOCK_TYPES, strict=False):
        qtype = gguf.GGMLQuantizationType[name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rows, row = int(t.shape[1]), int(t.shape[0])
        blocks = _random_blocks(qtype, rows * row // block, rng)
        raw[t.name] = (qtype, blocks.reshape(rows, row // block * size))
    source = _rewrite_gguf(src, tmp_path / "iq.gguf", {}, raw=raw)
    assert set(RANDOM_BLOCK_TYPES) <= set(inspect_gguf(source)["tensor_types"])
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    reference = dequantized_reference(wide_models["qwen3"], source, tmp_path / "ref")
    assert_same_parameters(model_parameters(out), model_parameters(reference))


@pytest.mark.parametrize("arch", ARCHS_UNDER_TEST)
def test_config_tokenizer_and_chat_template_survive(
    arch: str, wide_models: dict[str, Path], gguf_file: Callable[[str, str], Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    src = wide_models[arch]
    out = convert(gguf_file(arch, "F16"), tmp_path / "mlx", make_recipe("fp16"))
    want_cfg = json.loads((src / "config.json").read_text())
    got_cfg = json.loads((out / "config.json").read_text())
    keys = [
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "max_position_embeddings",
    ]
    if arch == "qwen3_moe":
        keys += ["num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob"]
    if arch == "glm4_moe":
        keys += [
            "head_dim",
            "attention_bias",
            "partial_rotary_factor",
            "n_routed_experts",
            "n_shared_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "first_k_dense_replace",
            "routed_scaling_factor",
            "norm_topk_prob",
            "n_group",
            "topk_group",
        ]
    if arch == "deepseek_v3":
        keys.remove("intermediate_size")  # below with the MoE keys
        keys += [
            "intermediate_size",
            "q_lora_rank",
            "kv_lora_rank",
            "qk_rope_head_dim",
            "qk_nope_head_dim",
            "v_head_dim",
            "n_routed_experts",
            "n_shared_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "first_k_dense_replace",
            "routed_scaling_factor",
            "norm_topk_prob",
            "scoring_func",
            "topk_method",
            "n_group",
            "topk_group",
        ]
        # YaRN: llama.cpp keeps the factor, original context and 0.1 * mscale_all_dim.
        scaling = {k: want_cfg["rope_scaling"][k] for k in got_cfg["rope_scaling"]}
        assert got_cfg["rope_scaling"] == scaling | {"type": "yarn"}
        assert set(want_cfg["rope_scaling"]) - set(scaling) == {"beta_fast", "beta_slow"}
    if arch == "gemma3_text":
        keys += [
            "head_dim",
            "hidden_activation",
            "query_pre_attn_scalar",
            "rope_local_base_freq",
            "sliding_window",
            "sliding_window_pattern",
        ]
    # llama.cpp writes MistralForCausalLM as arch "llama": same layers, llama model type.
    want_cfg["model_type"] = ARCHS[ge.GGUF_ARCH[arch]].model_type
    assert {k: got_cfg[k] for k in keys} == {k: want_cfg[k] for k in keys}
    assert got_cfg["eos_token_id"] == want_cfg["eos_token_id"]
    # Tied models have no output tensor in the GGUF and no lm_head after conversion.
    assert ("lm_head.weight" in model_parameters(out)) is not want_cfg["tie_word_embeddings"]

    want_tok = AutoTokenizer.from_pretrained(str(src))
    got_tok = AutoTokenizer.from_pretrained(str(out))
    ids = want_tok.encode(TEXT)
    assert got_tok.encode(TEXT) == ids
    assert got_tok.decode(ids) == want_tok.decode(ids)
    assert got_tok.convert_ids_to_tokens(ids) == want_tok.convert_ids_to_tokens(ids)
    assert (got_tok.eos_token, got_tok.pad_token) == (want_tok.eos_token, want_tok.pad_token)
    for generation_prompt in (False, True):
        want = want_tok.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=generation_prompt
        )
        got = got_tok.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=generation_prompt
        )
        assert got == want
        # local-ai's sandboxed renderer gives the same text as transformers.
        template = json.loads((out / "tokenizer_config.json").read_text())["chat_template"]
        specials = {"bos_token": got_tok.bos_token, "eos_token": got_tok.eos_token}
        sandboxed = render_chat_template(
            template, MESSAGES, add_generation_prompt=generation_prompt, special_tokens=specials
        )
        assert sandboxed == want


def test_qk_permutation_is_undone(wide_models: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp interleaves Q/K rows per head for llama-family archs; the converter must put
    HF's rows back (an F32 export makes the comparison exact up to the fp16 target)."""
    import mlx.core as mx

    src = wide_models["llama"]
    weights, _ = tm.load_safetensors(src / "model.safetensors")
    for arch_name in ("llama", "mistral3"):
        gguf_path = ge.export_gguf(
            src, tmp_path / f"{arch_name}.gguf", "F32", arch_override=arch_name
        )
        stored = ge.read_tensors(gguf_path)
        q_hf = weights["model.layers.1.self_attn.q_proj.weight"]
        assert not np.array_equal(stored["blk.1.attn_q.weight"][1], q_hf)  # really permuted
        out = convert(gguf_path, tmp_path / f"{arch_name}-mlx", make_recipe("fp16"))
        params = model_parameters(out)
        for proj in ("q_proj", "k_proj"):
            name = f"model.layers.1.self_attn.{proj}.weight"
            want = weights[name].astype(np.float16)
            assert np.array_equal(np.array(params[name].astype(mx.float16)), want), name
    assert json.loads((tmp_path / "mistral3-mlx" / "config.json").read_text())["model_type"] == (
        ARCHS["mistral3"].model_type
    )


def test_moe_with_dense_layers_and_untied_head(tmp_path: Path) -> None:
    """qwen3moe with a dense layer (mlp_only_layers) and an untied output head. (The dense layer
    is the last: mlx-lm only stacks HF experts when layer 0 has them.)"""
    src = tm.build_model(tmp_path / "src", "qwen3_moe", seed=3, mlp_only_layers=[1], **WIDE)
    source = ge.export_gguf(src, tmp_path / "moe.gguf", "Q8_0")
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlp_only_layers"] == [1] and cfg["tie_word_embeddings"] is False
    params = model_parameters(out)
    assert params["model.layers.0.mlp.switch_mlp.up_proj.weight"].shape == (4, 256, 256)
    assert "model.layers.1.mlp.up_proj.weight" in params and "lm_head.weight" in params
    reference = dequantized_reference(src, source, tmp_path / "ref")
    assert_same_parameters(params, model_parameters(reference))


def test_shards_are_laid_out_and_indexed(wide_models: dict[str, Path], tmp_path: Path) -> None:
    source = ge.export_gguf(wide_models["qwen3"], tmp_path / "q.gguf", "Q4_K")
    one = convert(source, tmp_path / "one", make_recipe("q4"))
    many = convert(source, tmp_path / "many", make_recipe("q4"), shard_bytes=100_000)
    shards = sorted(p.name for p in many.glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert_same_weights(one, many)
    assert_same_parameters(model_parameters(many), model_parameters(one))


@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv != "fp16"])
def test_quantized_levels_match_mlx_lm_on_the_dequantized_weights(
    level: str, wide_models: dict[str, Path], gguf_file: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """GGUF -> level gives the same tensors and quantization config as mlx-lm's own conversion
    of the same (dequantized) weights: which layers are quantized, with what bits and groups."""
    source = gguf_file("qwen3", "Q8_0")
    # Without a dtype the GGUF converter casts to fp16 first (the file has no BF16 tensor).
    dtype: tm.DType = "float32" if level == "bf16" else "float16"
    reference = dequantized_reference(wide_models["qwen3"], source, tmp_path / "ref", dtype)
    recipe = make_recipe(level, 128 if level in ("q4", "mixed_4_6") else None)
    ours = convert(source, tmp_path / "ours", recipe)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    convert_safetensors(reference, theirs, recipe)
    assert_same_weights(ours, theirs)
    got, want = (json.loads((d / "config.json").read_text()) for d in (ours, theirs))
    assert got.get("quantization") == want.get("quantization")
    if recipe.mixed:  # per-layer entries: 6 bits for some v_proj/down_proj, low bits elsewhere
        low = int(level.split("_")[1])
        bits = {v["bits"] for v in got["quantization"].values() if isinstance(v, dict)}
        assert bits == {low, 6}
    elif recipe.quantized:
        assert got["quantization"]["bits"] == recipe.bits
        assert got["quantization"]["group_size"] == recipe.group_size


@pytest.mark.parametrize("arch", ARCHS_UNDER_TEST)
def test_q8_of_each_arch_matches_mlx_lm_and_stays_close(
    arch: str,
    wide_models: dict[str, Path],
    gguf_file: Callable[[str, str], Path],
    original: dict[str, tuple[list[list[int]], np.ndarray]],
    tmp_path: Path,
) -> None:
    source = gguf_file(arch, "F16")
    reference = dequantized_reference(wide_models[arch], source, tmp_path / "ref")
    ours = convert(source, tmp_path / "ours", make_recipe("q8"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    convert_safetensors(reference, theirs, make_recipe("q8"))
    assert_same_weights(ours, theirs)
    ids, want = original[arch]
    got = compare(logits(ours, ids), want)
    # Measured: 0.022 for the dense archs; 0.116 for qwen3_moe, where 8-bit router weights
    # flip a few expert choices, DEEPSEEK_Q8 for deepseek_v3 (docs/conversion.md).
    limit = {"qwen3_moe": 0.2, "deepseek_v3": DEEPSEEK_Q8}.get(arch, 0.04)
    assert got["rel_rms"] <= limit, got


def test_requantizing_low_bit_weights_warns_and_names_the_base_repo(
    wide_models: dict[str, Path], tmp_path: Path
) -> None:
    from local_ai.convert.api import plan_warnings

    low = ge.export_gguf(
        wide_models["qwen3"], tmp_path / "low.gguf", "Q4_K", base_model="Org/Base-7B"
    )
    facts = inspect_gguf(low)
    assert facts["base_model"] == "Org/Base-7B" and "Q4_K" in facts["low_bit_types"]
    (warning,) = plan_warnings(facts, make_recipe("q4"))
    assert "compounds" in warning and "Org/Base-7B" in warning
    assert plan_warnings(facts, make_recipe("bf16")) == []
    (tmp_path / "out").mkdir()
    assert convert_gguf(low, tmp_path / "out", make_recipe("q4")).warnings == [warning]
    high = ge.export_gguf(wide_models["qwen3"], tmp_path / "high.gguf", "Q8_0")
    assert plan_warnings(inspect_gguf(high), make_recipe("q4")) == []


def test_gemma3_norm_shift_tied_head_and_sliding_window(
    wide_models: dict[str, Path], gguf_file: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """llama.cpp stores Gemma norms as 1 + w and keeps the window size as metadata; the
    converter subtracts the 1 again, drops the tied head as mlx-lm's loader does, and restores
    the window settings, so cached (incremental) decoding past the window matches the original."""
    import mlx.core as mx
    from mlx_lm import generate, load

    src = wide_models["gemma3_text"]
    weights, _ = tm.load_safetensors(src / "model.safetensors")
    source = ge.export_gguf(src, tmp_path / "g.gguf", "F32")
    stored = ge.read_tensors(source)
    norm = "model.layers.5.post_feedforward_layernorm.weight"
    assert np.array_equal(stored["blk.5.post_ffw_norm.weight"][1], weights[norm] + np.float32(1))
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["sliding_window"], cfg["sliding_window_pattern"]) == (16, 6)
    params = model_parameters(out)
    assert "lm_head.weight" not in params
    for name in (norm, "model.norm.weight", "model.layers.0.self_attn.q_norm.weight"):
        got = np.array(params[name].astype(mx.float32))
        assert np.abs(got - weights[name]).max() < 1e-4, name  # fp16 rounding only

    prompt = "def fibonacci(n: int) -> list[int]:\n    values"  # + 30 tokens > window 16
    texts = []
    for path in (src, out):
        model, tok = load(str(path))
        model.set_dtype(mx.float32)
        texts.append(generate(model, tok, prompt, max_tokens=30))
    assert texts[0] == texts[1] and texts[0]


def test_gemma3_refuses_what_mlx_lm_cannot_run(
    wide_models: dict[str, Path], tmp_path: Path
) -> None:
    """Final-logit softcapping (Gemma 2 style) has no mlx-lm gemma3_text counterpart."""
    from local_ai.errors import NotYetError

    src = ge.export_gguf(wide_models["gemma3_text"], tmp_path / "g.gguf", "F16")
    capped = _rewrite_gguf(src, tmp_path / "capped.gguf", {"gemma3.final_logit_softcapping": 30.0})
    with pytest.raises(NotYetError, match="final_logit_softcapping"):
        convert(capped, tmp_path / "mlx", make_recipe("fp16"))


def _rewrite_gguf(
    src: Path,
    dst: Path,
    values: dict[str, Any],
    tensors: dict[str, np.ndarray] | None = None,
    raw: dict[str, tuple[Any, np.ndarray]] | None = None,
) -> Path:
    """``src`` with metadata ``values`` set (bools as BOOL, ints as UINT32, floats as FLOAT32),
    ``tensors`` (float32) appended and the tensors in ``raw`` replaced by (type, block bytes)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(dst), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in values:
            continue
        writer.add_key_value(name, field.contents(), field.types[0], field.types[-1])
    for name, value in values.items():
        if isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, float):
            writer.add_float32(name, value)
        else:
            writer.add_uint32(name, int(value))
    for t in reader.tensors:
        qtype, data = (raw or {}).get(t.name, (t.tensor_type, np.asarray(t.data)))
        writer.add_tensor(t.name, data, raw_dtype=qtype)
    for name, arr in (tensors or {}).items():
        writer.add_tensor(name, arr.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_glm4moe_router_bias_shared_expert_and_mtp_block(tmp_path: Path) -> None:
    """GLM-4.5's GGUFs carry the multi-token-prediction block after the decoder layers
    (``nextn_predict_layers``); mlx-lm drops it, and so does the converter. The router's
    score-correction bias stays float32 (mlx-lm's cast_predicate) in every target."""
    import mlx.core as mx

    src = tm.build_model(tmp_path / "src", "glm4_moe", seed=2, num_layers=3, **WIDE)
    three = ge.export_gguf(src, tmp_path / "three.gguf", "Q8_0")
    hidden = WIDE["hidden_size"]
    mtp = _rewrite_gguf(
        three,
        tmp_path / "mtp.gguf",
        {"glm4moe.block_count": 3, "glm4moe.nextn_predict_layers": 1},
        {"blk.2.nextn.eh_proj.weight": np.ones((hidden, 2 * hidden), np.float32)},
    )
    out = convert(mtp, tmp_path / "mlx", make_recipe("q4"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["num_nextn_predict_layers"] == 0
    params = model_parameters(out)
    assert not any(n.startswith("model.layers.2.") for n in params)
    bias = params["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.dtype == mx.float32
    want = tm.load_safetensors(src / "model.safetensors")[0]
    assert np.array_equal(np.array(bias), want["model.layers.1.mlp.gate.e_score_correction_bias"])
    assert "model.layers.1.mlp.shared_experts.up_proj.scales" in params

    # Without the MTP block the same file is a 3-layer model.
    full = convert(three, tmp_path / "full", make_recipe("fp16"))
    assert json.loads((full / "config.json").read_text())["num_hidden_layers"] == 3


@pytest.mark.parametrize(
    ("arch", "legacy_mla"),
    [("deepseek_v3", True), ("deepseek_v2", False)],
    ids=["v3-legacy-kv_b", "v2-split-k_b-v_b"],
)
def test_deepseek_mla_layouts_and_softmax_router(
    arch: str, legacy_mla: bool, tmp_path: Path
) -> None:
    """Both llama.cpp MLA layouts into both mlx-lm layouts: deepseek_v3 holds kv_b split per
    head (embed_q/unembed_out), deepseek_v2 whole (kv_b_proj), so the converter re-splits an
    older file's attn_kv_b or re-joins a newer file's attn_k_b/attn_v_b, also quantized (row
    blocks written per head). The V2 variant is softmax-routed, without a q LoRA (attn_q) and
    with YaRN mscale 0.707."""
    from local_ai.errors import NotYetError

    src = tm.build_model(tmp_path / "src", arch, seed=1, **WIDE)
    source = ge.export_gguf(src, tmp_path / "f16.gguf", "F16", legacy_mla=legacy_mla)
    stored = set(ge.read_tensors(source))
    assert ("blk.1.attn_kv_b.weight" in stored) is legacy_mla
    assert ("blk.1.attn_k_b.weight" in stored) is not legacy_mla
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    cfg = json.loads((out / "config.json").read_text())
    want_cfg = json.loads((src / "config.json").read_text())
    for key in ("model_type", "q_lora_rank", "scoring_func", "topk_method", "norm_topk_prob"):
        assert cfg[key] == want_cfg[key], key
    assert cfg["rope_scaling"]["mscale_all_dim"] == want_cfg["rope_scaling"]["mscale_all_dim"]
    params = model_parameters(out)
    whole = "model.layers.0.self_attn.kv_b_proj.weight" in params
    assert whole is (arch == "deepseek_v2")
    reference = dequantized_reference(src, source, tmp_path / "ref")
    assert_same_parameters(params, model_parameters(reference))
    ids = prompt_ids(src)
    got = compare(logits(out, ids), logits(src, ids))
    assert got["max_abs"] <= MAX_ABS["F16"], got

    ours = convert(source, tmp_path / "q4", make_recipe("q4"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    convert_safetensors(reference, theirs, make_recipe("q4"))
    assert_same_weights(ours, theirs)
    quantized = "kv_b_proj" if whole else "embed_q"
    assert f"model.layers.2.self_attn.{quantized}.scales" in model_parameters(ours)

    if arch == "deepseek_v2":  # mlx-lm's deepseek_v2 never renormalises the top-k weights
        renorm = _rewrite_gguf(
            source, tmp_path / "norm.gguf", {"deepseek2.expert_weights_norm": True}
        )
        with pytest.raises(NotYetError, match="renormalised"):
            convert(renorm, tmp_path / "refused", make_recipe("fp16"))


@pytest.mark.parametrize("arch", ["deepseek_v3", "deepseek_v2"])
def test_deepseek_without_rope_scaling_is_plain_rope(arch: str, tmp_path: Path) -> None:
    """A deepseek2 GGUF with no ``rope.scaling.*`` keys (a model trained without YaRN): the
    sigmoid-routed file gives mlx-lm's deepseek_v3 no rope_scaling and the original's logits;
    the softmax-routed one gets YaRN factor 1 (mlx-lm's deepseek_v2 always builds YaRN, and
    cannot load a config without it), which must run exactly as plain RoPE, unscaled."""
    import mlx.core as mx

    src = tm.build_model(tmp_path / "src", arch, seed=4, **WIDE)
    cfg_path = src / "config.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"rope_scaling": None}))
    source = ge.export_gguf(src, tmp_path / "f16.gguf", "F16")
    assert not any(k.startswith("deepseek2.rope.scaling") for k in read_gguf(source).metadata)
    out = convert(source, tmp_path / "mlx", make_recipe("fp16"))
    cfg = json.loads((out / "config.json").read_text())
    want_cfg = json.loads(cfg_path.read_text())
    if arch == "deepseek_v3":
        assert cfg["rope_scaling"] is None
        ids = prompt_ids(src)
        got = compare(logits(out, ids), logits(src, ids))
        assert got["max_abs"] <= MAX_ABS["F16"] and got["top1"] >= TOP1["F16"], got
        return
    assert cfg["rope_scaling"] == {
        "type": "yarn",
        "factor": 1.0,
        "original_max_position_embeddings": want_cfg["max_position_embeddings"],
    }
    attn = load_model(out).model.layers[1].self_attn
    dims = want_cfg["qk_rope_head_dim"]
    qk_head = want_cfg["qk_nope_head_dim"] + dims
    assert attn.scale == pytest.approx(qk_head**-0.5)  # no YaRN attention scaling
    x = mx.random.normal((1, 4, 47, dims), key=mx.random.key(0))
    for offset in (0, 5):
        plain = mx.fast.rope(
            x, dims, traditional=True, base=want_cfg["rope_theta"], scale=1.0, offset=offset
        )
        assert np.allclose(np.array(attn.rope(x, offset=offset)), np.array(plain), atol=1e-5)
