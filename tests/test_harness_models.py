"""The tiny-model harness itself: HF layout, mlx-lm compatibility, tokenizer, GGUF export, K-quants.

Every later test and benchmark trusts these fixtures, so this file checks them against independent
references: mlx-lm's loader, the HF tokenizer stack, gguf-py's tensor names and dequantizers, MLX's
own GGUF reader, and a numpy RoPE model for the llama Q/K permutation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from tests.harness import gguf_export as ge
from tests.harness import tinymodels as tm

ROOT = Path(__file__).resolve().parents[1]
ARCHS = tm.ARCHITECTURES
MT = gguf.MODEL_TENSOR

# Shapes where every 2-D row splits into 256-blocks, so K-quants are really used (no fallback).
WIDE: dict[str, Any] = {
    "hidden_size": 256,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 512,
    "moe_intermediate_size": 256,
}
GGUF_QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K")


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Default-size model of every arch, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: tm.build_model(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def wide_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hidden-256 model of every arch (rows are multiples of the K-quant block size)."""
    root = tmp_path_factory.mktemp("wide")
    return {arch: tm.build_model(root / arch, arch, seed=1, **WIDE) for arch in ARCHS}


@pytest.fixture(scope="module")
def loaded(tiny_models: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    """``mlx_lm.load`` result per arch (loading is the slow part, so share it)."""
    from mlx_lm import load

    return {arch: load(str(path)) for arch, path in tiny_models.items()}


def _config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


# ------------------------------------------------------------------------------------------
# HF layout


@pytest.mark.parametrize("arch", ARCHS)
def test_config_and_tensors_follow_hf_layout(tiny_models: dict[str, Path], arch: str) -> None:
    path = tiny_models[arch]
    cfg = _config(path)
    spec = tm.SPECS[arch]
    assert cfg["model_type"] == arch
    assert cfg["architectures"] == [spec.hf_class]
    assert cfg["tie_word_embeddings"] is spec.tie_word_embeddings
    assert cfg["vocab_size"] == tm.TOKENIZER_VOCAB_SIZE
    assert ("head_dim" in cfg) is (arch not in ("qwen2", "deepseek_v3"))
    if arch in ("qwen3", "qwen3_moe", "llama", "gemma3_text"):
        assert cfg["attention_bias"] is False
    if arch == "gemma3_text":
        assert "hidden_act" not in cfg and cfg["hidden_activation"] == "gelu_pytorch_tanh"
        assert cfg["query_pre_attn_scalar"] == cfg["head_dim"]
        assert cfg["sliding_window_pattern"] == 6 and cfg["sliding_window"] == 16
    if arch == "glm4_moe":
        assert cfg["first_k_dense_replace"] == 1 and cfg["n_shared_experts"] == 1
        assert cfg["partial_rotary_factor"] == 0.5 and cfg["n_routed_experts"] == 4
        assert "num_experts" not in cfg
    elif arch == "deepseek_v3":  # DeepSeek-V3's proportions at hidden 64, 4 heads
        assert cfg["q_lora_rank"] == cfg["kv_lora_rank"] == 64
        assert (cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]) == (16, 8, 16)
        assert cfg["scoring_func"] == "sigmoid" and cfg["topk_method"] == "noaux_tc"
        assert (cfg["n_group"], cfg["topk_group"], cfg["first_k_dense_replace"]) == (2, 1, 1)
        assert cfg["rope_scaling"]["type"] == "yarn" and "num_experts" not in cfg
    elif arch == "qwen3_moe":
        for key in (
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "decoder_sparse_step",
            "norm_topk_prob",
            "mlp_only_layers",
        ):
            assert key in cfg
    else:
        assert "num_experts" not in cfg

    weights, dtypes = tm.load_safetensors(path / "model.safetensors")
    assert set(dtypes.values()) == {"F32"}
    names = set(weights)
    assert "model.embed_tokens.weight" in names
    assert "model.norm.weight" in names
    assert ("lm_head.weight" in names) is (not spec.tie_word_embeddings)
    assert any(n.endswith("q_proj.bias") for n in names) is spec.attention_bias
    assert any(n.endswith("q_norm.weight") for n in names) is spec.qk_norm
    if arch == "qwen3_moe":
        assert weights["model.layers.1.mlp.experts.3.down_proj.weight"].shape == (64, 64)
        assert weights["model.layers.0.mlp.gate.weight"].shape == (4, 64)
        assert not any(".mlp.gate_proj." in n for n in names)
    if arch == "glm4_moe":  # layer 0 dense, layer 1 MoE with a shared expert
        assert "model.layers.0.mlp.gate_proj.weight" in names
        assert weights["model.layers.1.mlp.experts.3.down_proj.weight"].shape == (64, 64)
        assert weights["model.layers.1.mlp.shared_experts.up_proj.weight"].shape == (64, 64)
        assert weights["model.layers.1.mlp.gate.e_score_correction_bias"].shape == (4,)
        assert "model.layers.0.mlp.gate.weight" not in names
    if arch == "deepseek_v3":  # MLA: latent projections, kv_b decompresses per head
        attn = "model.layers.0.self_attn"
        assert weights[f"{attn}.q_a_proj.weight"].shape == (64, 64)
        assert weights[f"{attn}.q_b_proj.weight"].shape == (4 * 24, 64)
        assert weights[f"{attn}.kv_a_proj_with_mqa.weight"].shape == (64 + 8, 64)
        assert weights[f"{attn}.kv_b_proj.weight"].shape == (4 * 32, 64)
        assert weights[f"{attn}.o_proj.weight"].shape == (64, 64)
        assert weights["model.layers.2.mlp.gate.e_score_correction_bias"].shape == (4,)
        assert weights["model.layers.2.mlp.shared_experts.up_proj.weight"].shape == (64, 64)
        assert not any(".k_proj." in n for n in names)
    else:
        assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
        assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    if arch == "gemma3_text":
        for norm in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            assert f"model.layers.1.{norm}.weight" in names
    center = 0.0 if arch in tm.OFFSET_NORM_ARCHS else 1.0  # Gemma: scale is 1 + weight
    for name, arr in weights.items():
        if name.endswith("norm.weight"):
            assert abs(float(arr.mean()) - center) < 0.05 and float(arr.std()) > 0.01
        else:
            assert float(arr.std()) > 0.005, name
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [
        tm.token_id(arch, "<|im_end|>"),
        tm.token_id(arch, "<|endoftext|>"),
    ]


def test_builds_are_deterministic(tmp_path: Path) -> None:
    a = tm.build_model(tmp_path / "a", "qwen3_moe", seed=7)
    b = tm.build_model(tmp_path / "b", "qwen3_moe", seed=7)
    c = tm.build_model(tmp_path / "c", "qwen3_moe", seed=8)
    deeper = tm.build_model(tmp_path / "d", "qwen3_moe", seed=7, num_layers=3)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    wa, _ = tm.load_safetensors(a / "model.safetensors")
    wd, _ = tm.load_safetensors(deeper / "model.safetensors")
    assert all(np.array_equal(wa[k], wd[k]) for k in wa)  # tensors depend only on name+seed


def test_tokenizer_training_is_deterministic_across_processes() -> None:
    here = hashlib.sha256(tm._trained_bpe_json().encode()).hexdigest()
    code = (
        "import hashlib; from tests.harness.tinymodels import _trained_bpe_json as t; "
        "print(hashlib.sha256(t().encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == here


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files_load_with_the_stored_values(tmp_path: Path, dtype: tm.DType) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    path = tm.build_model(tmp_path / dtype, "qwen3", dtype=dtype)
    cfg = _config(path)
    assert cfg["torch_dtype"] == dtype
    stored, dtypes = tm.load_safetensors(path / "model.safetensors")
    assert set(dtypes.values()) == {"F16" if dtype == "float16" else "BF16"}
    expected = tm.cast_weights(tm.make_weights(cfg), dtype)
    model, _ = load(str(path))
    params = dict(tree_flatten(model.parameters()))
    assert {str(v.dtype) for v in params.values()} == {f"mlx.core.{dtype}"}
    for name, arr in expected.items():
        assert np.array_equal(stored[name], arr), name
        assert np.array_equal(np.array(params[name].astype(mx.float32)), arr), name


def test_qwen3_25m_variant_shape() -> None:
    cfg = tm.model_config("qwen3", **tm.QWEN3_25M)
    assert cfg["hidden_size"] == 512 and cfg["num_hidden_layers"] == 8
    assert 25_000_000 < tm.parameter_count(cfg) < 26_500_000


@pytest.mark.slow
def test_qwen3_25m_builds_and_generates(tmp_path: Path) -> None:
    from mlx_lm import load, stream_generate

    path = tm.build_qwen3_25m(tmp_path / "q25m")
    model, tok = load(str(path))
    responses = list(stream_generate(model, tok, "Hello", max_tokens=16))
    assert 1 <= len(responses) <= 16


# ------------------------------------------------------------------------------------------
# mlx-lm


@pytest.mark.parametrize("arch", ARCHS)
def test_mlx_lm_loads_and_generates(loaded: dict[str, tuple[Any, Any]], arch: str) -> None:
    import mlx.core as mx
    from mlx_lm import generate, stream_generate

    model, tok = loaded[arch]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Write a function that adds two numbers."}],
        add_generation_prompt=True,
    )
    responses = list(stream_generate(model, tok, prompt, max_tokens=12))
    assert 1 <= len(responses) <= 12
    assert responses[-1].generation_tokens == len(responses)
    text = generate(model, tok, prompt, max_tokens=12)
    assert text == "".join(r.text for r in responses)  # greedy decoding is deterministic

    # logits are informative: not flat, and they depend on the context
    last = []
    for text_in in ("Hello there, how are you?", "def fibonacci(n):"):
        logits = np.array(model(mx.array([tok.encode(text_in)]))[0, -1].astype(mx.float32))
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert float(logits.std()) > 1.0
        assert float(probs.max()) > 0.02
        last.append(logits)
    assert float(np.abs(last[0] - last[1]).max()) > 1.0


def test_mlx_lm_weights_match_make_weights(loaded: dict[str, tuple[Any, Any]]) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    for arch in ("qwen3_moe", "mistral"):
        model, _ = loaded[arch]
        cfg = tm.model_config(arch)
        ours = tm.make_weights(cfg)
        params = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
        for name, arr in ours.items():
            if ".mlp.experts." in name:
                layer, proj = name.split(".mlp.experts.")[0], name.split(".")[-2]
                expert = int(name.split(".mlp.experts.")[1].split(".")[0])
                got = params[f"{layer}.mlp.switch_mlp.{proj}.weight"][expert]
            else:
                got = params[name]
            assert np.array_equal(got, arr), (arch, name)


# ------------------------------------------------------------------------------------------
# tokenizer and chat template

ROUND_TRIP_TEXTS = (
    "Hello there, how are you?",
    "The quick brown fox jumps over 13 lazy dogs; 2026-11-25 at 09:41.",
    "def add(a: int, b: int) -> int:\n\treturn a + b  # sum\n",
    '{"name": "get_weather", "arguments": {"city": "Zürich"}}',
    "   leading, double  and trailing spaces   \n\n",
    "naïve façade — “quotes” ✓ 🙂 日本語 中文",
    "<|im_start|>user\nhi<|im_end|>\n",
)


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_round_trips(loaded: dict[str, tuple[Any, Any]], arch: str) -> None:
    from tokenizers import Tokenizer

    _, tok = loaded[arch]
    spec = tm.SPECS[arch]
    assert len(tok.get_vocab()) == tm.TOKENIZER_VOCAB_SIZE
    for text in ROUND_TRIP_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert len(ids) < len(text.encode())  # merges were learned
    ids = tok.encode("Hello")
    if spec.add_bos_token:
        assert ids[0] == tm.token_id(arch, "<|begin_of_text|>")
        assert tok.bos_token == "<|begin_of_text|>"
    else:
        assert tm.token_id(arch, "<|begin_of_text|>") not in ids
        assert tok.bos_token is None
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>"):
        assert tok.encode(special, add_special_tokens=False) == [tm.token_id(arch, special)]
    assert tok.eos_token_ids == {
        tm.token_id(arch, "<|im_end|>"),
        tm.token_id(arch, "<|endoftext|>"),
    }
    assert tok.has_thinking is spec.thinking
    assert tok.has_tool_calling and tok.tool_call_start == "<tool_call>"

    raw = Tokenizer.from_file(str(tm.build_tokenizer(Path.cwd() / arch, arch) / "tokenizer.json"))
    sample = ROUND_TRIP_TEXTS[1]
    assert raw.encode(sample, add_special_tokens=False).ids == tok.encode(
        sample, add_special_tokens=False
    )


def test_pretokenizer_regex_differs_per_family(tiny_models: dict[str, Path]) -> None:
    from tokenizers import Tokenizer, decoders

    def pieces(arch: str) -> list[str]:
        tok = Tokenizer.from_file(str(tiny_models[arch] / "tokenizer.json"))
        assert tok.pre_tokenizer is not None
        return [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("abc 12345678")]

    # Qwen2 regex: one digit per pre-token; Llama-3 regex: up to three digits per pre-token.
    assert pieces("qwen3") == ["abc", "Ġ", *"12345678"]
    assert pieces("llama") == ["abc", "Ġ", "123", "456", "78"]
    # DeepSeek-V3: digits first, then CJK+kana runs, then the rest (one punctuation mark may
    # lead letters); Llama-3's regex keeps letters of any script together.
    assert pieces("deepseek_v3") == ["abc", "Ġ", "123", "456", "78"]

    def split(arch: str, text: str) -> list[str]:
        tok = Tokenizer.from_file(str(tiny_models[arch] / "tokenizer.json"))
        assert tok.pre_tokenizer is not None
        pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
        return [decoders.ByteLevel().decode([p]) for p in pieces]

    assert split("deepseek_v3", "x日本語です.dot") == ["x", "日本語です", ".dot"]
    assert split("llama", "x日本語です.dot") == ["x日本語です", ".dot"]


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
]
RENDERED = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
)


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_template_renders_chatml(loaded: dict[str, tuple[Any, Any]], arch: str) -> None:
    _, tok = loaded[arch]
    bos = "<|begin_of_text|>" if tm.SPECS[arch].add_bos_token else ""
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == bos + RENDERED + "<|im_start|>assistant\n"
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    assert text == bos + RENDERED
    ids = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert ids.count(tm.token_id(arch, "<|im_start|>")) == 5
    if bos:
        assert ids[0] == tm.token_id(arch, bos) and ids[1] != ids[0]  # exactly one BOS


def test_chat_template_tools_and_thinking(loaded: dict[str, tuple[Any, Any]]) -> None:
    _, tok = loaded["qwen3"]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "18 C"},
    ]
    text = tok.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tools[0], ensure_ascii=False) + "\n</tools>" in text
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert f"<|im_start|>assistant\n<tool_call>\n{call}\n</tool_call><|im_end|>\n" in text
    assert "<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.tool_parser('{"name": "f", "arguments": {}}', tools) == {
        "name": "f",
        "arguments": {},
    }

    no_think = tok.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# ------------------------------------------------------------------------------------------
# GGUF export


def _arch_enum(name: str) -> gguf.MODEL_ARCH:
    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == name)


def _expected_gguf_tensors(cfg: dict[str, Any]) -> dict[str, MT]:
    """Tensor names from gguf-py's TENSOR_NAMES, derived from the HF config alone."""
    names = gguf.TENSOR_NAMES
    out = {f"{names[MT.TOKEN_EMBD]}.weight": MT.TOKEN_EMBD}
    out[f"{names[MT.OUTPUT_NORM]}.weight"] = MT.OUTPUT_NORM
    if not cfg["tie_word_embeddings"]:
        out[f"{names[MT.OUTPUT]}.weight"] = MT.OUTPUT
    kinds = [MT.ATTN_NORM, MT.ATTN_Q, MT.ATTN_K, MT.ATTN_V, MT.ATTN_OUT]
    if cfg["model_type"] == "deepseek_v3":
        kinds = [MT.ATTN_NORM, MT.ATTN_Q_A, MT.ATTN_Q_A_NORM, MT.ATTN_Q_B, MT.ATTN_KV_A_MQA]
        kinds += [MT.ATTN_KV_A_NORM, MT.ATTN_K_B, MT.ATTN_V_B, MT.ATTN_OUT, MT.FFN_NORM]
    elif cfg["model_type"] == "gemma3_text":  # same name, "blk.N.ffn_norm", as FFN_NORM
        kinds += [MT.FFN_PRE_NORM, MT.ATTN_POST_NORM, MT.FFN_POST_NORM]
    elif cfg["model_type"] == "glm4_moe":
        kinds += [MT.ATTN_POST_NORM]
    else:
        kinds += [MT.FFN_NORM]
    if cfg["model_type"] in ("qwen3", "qwen3_moe", "gemma3_text"):
        kinds += [MT.ATTN_Q_NORM, MT.ATTN_K_NORM]
    moe = [MT.FFN_GATE_INP, MT.FFN_GATE_EXP, MT.FFN_UP_EXP, MT.FFN_DOWN_EXP]
    dense = [MT.FFN_GATE, MT.FFN_UP, MT.FFN_DOWN]
    for bid in range(cfg["num_hidden_layers"]):
        if not tm.is_moe_layer(cfg, bid):
            ffn = dense
        elif cfg["model_type"] in ("glm4_moe", "deepseek_v3"):
            ffn = [*moe, MT.FFN_GATE_SHEXP, MT.FFN_UP_SHEXP, MT.FFN_DOWN_SHEXP]
            out[f"{names[MT.FFN_EXP_PROBS_B].format(bid=bid)}.bias"] = MT.FFN_EXP_PROBS_B
        else:
            ffn = moe
        for kind in kinds + ffn:
            out[f"{names[kind].format(bid=bid)}.weight"] = kind
        if cfg["model_type"] in ("qwen2", "glm4_moe"):
            for kind in (MT.ATTN_Q, MT.ATTN_K, MT.ATTN_V):
                out[f"{names[kind].format(bid=bid)}.bias"] = kind
    return out


def _hf_from_gguf(
    tensors: dict[str, tuple[QT, np.ndarray]], cfg: dict[str, Any], permuted: bool
) -> dict[str, tuple[QT, np.ndarray]]:
    """Undo the export: HF names, Q/K un-permuted, experts unstacked, Gemma norms shifted."""
    out: dict[str, tuple[QT, np.ndarray]] = {}
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for hf_name in tm.weight_shapes(cfg):
        if hf_name.endswith("kv_b_proj.weight"):  # split in two: see _mla_halves
            continue
        if ".mlp.experts." in hf_name:
            layer = hf_name.split(".")[2]
            expert = int(hf_name.split(".")[5])
            proj = hf_name.split(".")[6].removesuffix("_proj")
            qtype, arr = tensors[f"blk.{layer}.ffn_{proj}_exps.weight"]
            out[hf_name] = (qtype, arr[expert])
            continue
        qtype, arr = tensors[ge.gguf_name(hf_name, cfg["model_type"])]
        arr = arr - np.float32(ge.norm_shift(cfg["model_type"], hf_name))
        if permuted and ".q_proj." in hf_name:
            arr = ge.unpermute_qk(arr, n_head)
        elif permuted and ".k_proj." in hf_name:
            arr = ge.unpermute_qk(arr, n_kv)
        out[hf_name] = (qtype, arr)
    return out


def _mla_halves(
    tensors: dict[str, tuple[QT, np.ndarray]], cfg: dict[str, Any], want: dict[str, np.ndarray]
) -> list[tuple[str, QT, np.ndarray, np.ndarray]]:
    """(name, storage type, stored, expected) for the k_b/v_b halves of every kv_b_proj."""
    out = []
    for layer in range(cfg["num_hidden_layers"]):
        hf = want[f"model.layers.{layer}.self_attn.kv_b_proj.weight"]
        halves = ge.split_kv_b(hf, cfg["num_attention_heads"], cfg["qk_nope_head_dim"])
        for part, expected in zip("kv", halves, strict=True):
            name = f"blk.{layer}.attn_{part}_b.weight"
            out.append((name, *tensors[name], expected))
    return out


# max |error| / max |row| allowed per storage type (quant step plus fp16 scale rounding)
ROW_ERROR_BOUND = {
    QT.Q8_0: 0.6 / 127,
    QT.Q4_0: 1.05 / 8,
    QT.Q4_1: 0.08,
    QT.Q5_0: 1.05 / 16,
    QT.Q5_1: 0.04,
    QT.Q2_K: 0.43,
    QT.Q3_K: 0.18,
    QT.Q4_K: 0.09,
    QT.Q5_K: 0.05,
    QT.Q6_K: 0.02,
}


def _check_values(hf_name: str, qtype: QT, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, hf_name
    if qtype == QT.F32:
        assert np.array_equal(got, want), hf_name
    elif qtype == QT.F16:
        assert np.array_equal(got, want.astype(np.float16).astype(np.float32)), hf_name
    elif qtype == QT.BF16:
        assert np.array_equal(got, tm.from_bf16_bits(tm.to_bf16_bits(want))), hf_name
    else:
        amax = np.abs(want).max(axis=-1, keepdims=True)
        err = np.abs(got - want)
        assert np.all(err <= ROW_ERROR_BOUND[qtype] * amax + 1e-7), (hf_name, qtype)
        assert float(err.mean()) < 0.5 * ROW_ERROR_BOUND[qtype] * float(amax.mean()), hf_name


@pytest.mark.parametrize("qtype", GGUF_QTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_export_round_trips(
    wide_models: dict[str, Path], tmp_path: Path, arch: str, qtype: str
) -> None:
    path = wide_models[arch]
    cfg = _config(path)
    gguf_arch = ge.GGUF_ARCH[arch]
    out = ge.export_gguf(path, tmp_path / f"{arch}-{qtype}.gguf", qtype)
    meta = ge.read_metadata(out)
    tensors = ge.read_tensors(out)
    want_weights = tm.make_weights(cfg, seed=1)

    # metadata
    a = gguf_arch
    assert meta["general.architecture"] == a
    assert meta["general.name"] == path.name
    assert meta["general.file_type"] == int(ge.FILE_TYPES[qtype])
    assert meta[f"{a}.context_length"] == cfg["max_position_embeddings"]
    assert meta[f"{a}.embedding_length"] == 256
    assert meta[f"{a}.block_count"] == tm.default_layers(arch)
    assert meta[f"{a}.feed_forward_length"] == 512
    assert meta[f"{a}.attention.head_count"] == 4
    if arch == "deepseek_v3":  # llama.cpp's MLA-as-MQA: one KV head of latent + rotary key
        assert meta[f"{a}.attention.head_count_kv"] == 1
        assert meta[f"{a}.attention.key_length"] == 256 + 32
        assert meta[f"{a}.attention.value_length"] == 256
        assert meta[f"{a}.attention.key_length_mla"] == 64 + 32
        assert meta[f"{a}.attention.value_length_mla"] == 64
        assert meta[f"{a}.attention.q_lora_rank"] == meta[f"{a}.attention.kv_lora_rank"] == 256
        assert meta[f"{a}.rope.dimension_count"] == 32
        assert meta[f"{a}.rope.scaling.type"] == "yarn"
        assert meta[f"{a}.rope.scaling.factor"] == 40
        assert meta[f"{a}.rope.scaling.original_context_length"] == 4096
        assert meta[f"{a}.rope.scaling.yarn_log_multiplier"] == pytest.approx(0.1)
        assert meta[f"{a}.expert_gating_func"] == int(gguf.ExpertGatingFuncType.SIGMOID)
        assert meta[f"{a}.expert_group_count"] == 2
        assert meta[f"{a}.expert_group_used_count"] == 1
        assert meta[f"{a}.leading_dense_block_count"] == 1
        assert meta[f"{a}.expert_shared_count"] == 1
        assert meta[f"{a}.expert_weights_norm"] is True
    else:
        assert meta[f"{a}.attention.head_count_kv"] == 2
        assert meta[f"{a}.attention.key_length"] == meta[f"{a}.attention.value_length"] == 64
    assert meta[f"{a}.rope.freq_base"] == pytest.approx(cfg["rope_theta"])
    assert meta[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    if arch == "gemma3_text":
        assert meta[f"{a}.attention.sliding_window"] == 16
        # llama.cpp's Gemma3Model adds 1 to every norm (HF's Gemma RMSNorm scales by 1 + w).
        assert np.array_equal(
            tensors["blk.0.post_ffw_norm.weight"][1],
            want_weights["model.layers.0.post_feedforward_layernorm.weight"] + np.float32(1),
        )
    if arch == "glm4_moe":
        assert meta[f"{a}.rope.dimension_count"] == 32  # partial rotary: half of 64
        assert meta[f"{a}.expert_count"] == 4 and meta[f"{a}.expert_shared_count"] == 1
        assert meta[f"{a}.leading_dense_block_count"] == 1
        assert meta[f"{a}.expert_gating_func"] == int(gguf.ExpertGatingFuncType.SIGMOID)
        assert meta[f"{a}.expert_weights_scale"] == pytest.approx(2.5)
        assert meta[f"{a}.expert_weights_norm"] is True
    if arch == "qwen3_moe":
        assert meta[f"{a}.expert_count"] == 4
        assert meta[f"{a}.expert_used_count"] == 2
        assert meta[f"{a}.expert_feed_forward_length"] == 256
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_json = json.loads((path / "tokenizer.json").read_text())
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == ge.PRE_NAMES.get(arch, tm.SPECS[arch].pretokenizer)
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == tm.TOKENIZER_VOCAB_SIZE
    for text, tid in tok_json["model"]["vocab"].items():
        assert tokens[tid] == text
    types = meta["tokenizer.ggml.token_type"]
    for tid, content, special in tm.added_tokens(arch):
        assert tokens[tid] == content
        kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        assert types[tid] == kind
    assert types[0] == gguf.TokenType.NORMAL
    assert meta["tokenizer.ggml.merges"][:2] == [
        " ".join(m) for m in tok_json["model"]["merges"][:2]
    ]
    assert len(meta["tokenizer.ggml.merges"]) == len(tok_json["model"]["merges"])
    bos = tm.SPECS[arch].bos_token or "<|endoftext|>"
    assert meta["tokenizer.ggml.bos_token_id"] == tm.token_id(arch, bos)
    assert meta["tokenizer.ggml.eos_token_id"] == tm.token_id(arch, "<|im_end|>")
    assert meta["tokenizer.ggml.padding_token_id"] == tm.token_id(arch, "<|endoftext|>")
    assert meta["tokenizer.ggml.add_bos_token"] is tm.SPECS[arch].add_bos_token
    assert meta["tokenizer.chat_template"] == tok_cfg["chat_template"]

    # tensor names: complete, and each kind is one llama.cpp knows for the arch
    expected = _expected_gguf_tensors(cfg)
    assert set(tensors) == set(expected)
    allowed = set(gguf.MODEL_TENSORS[_arch_enum(a)])
    assert set(expected.values()) <= allowed
    assert next(iter(tensors)) == "token_embd.weight"

    # storage types: norms/biases/router F32, everything else the requested type
    for name, (stored, arr) in tensors.items():
        if arr.ndim == 1 or ".ffn_gate_inp." in name:
            assert stored == QT.F32, name
        elif name.endswith("attn_k_b.weight"):  # rows of qk_nope_head_dim (64): K-quant fallback
            assert stored == ge.tensor_qtype(name, arr.shape, QT[qtype]), name
            assert (stored == QT[qtype]) is (qtype not in ge.K_QUANTS), name
        else:
            assert stored == QT[qtype], name
    if (
        arch == "deepseek_v3"
    ):  # llama.cpp's kv_b split: k_b (heads, rank, nope), v_b (heads, v, rank)
        assert tensors["blk.1.attn_k_b.weight"][1].shape == (4, 256, 64)
        assert tensors["blk.1.attn_v_b.weight"][1].shape == (4, 64, 256)
        assert tensors["blk.2.ffn_up_exps.weight"][1].shape == (4, 256, 256)
    if arch == "qwen3_moe":
        assert tensors["blk.0.ffn_down_exps.weight"][1].shape == (4, 256, 256)
        assert tensors["blk.0.ffn_gate_exps.weight"][1].shape == (4, 256, 256)

    # values: identical to the HF weights after undoing the export transforms
    permuted = arch in ("llama", "mistral")
    for hf_name, (stored, got) in _hf_from_gguf(tensors, cfg, permuted).items():
        shift = np.float32(ge.norm_shift(arch, hf_name))  # (w + 1) - 1 rounds in float32
        _check_values(hf_name, stored, got, (want_weights[hf_name] + shift) - shift)
    if arch in tm.MLA_ARCHS:
        for name, stored, got, expected in _mla_halves(tensors, cfg, want_weights):
            _check_values(name, stored, got, expected)
        k_b, v_b = tensors["blk.0.attn_k_b.weight"][1], tensors["blk.0.attn_v_b.weight"][1]
        if qtype == "F32":  # and the split is undone exactly
            np.testing.assert_array_equal(
                ge.join_kv_b(k_b, v_b), want_weights["model.layers.0.self_attn.kv_b_proj.weight"]
            )


@pytest.mark.parametrize("qtype", ["BF16", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K"])
def test_other_qtypes_round_trip(wide_models: dict[str, Path], tmp_path: Path, qtype: str) -> None:
    path = wide_models["qwen3_moe"]
    cfg = _config(path)
    out = ge.export_gguf(path, tmp_path / f"{qtype}.gguf", qtype)
    assert ge.read_metadata(out)["general.file_type"] == int(ge.FILE_TYPES[qtype])
    tensors = ge.read_tensors(out)
    assert tensors["blk.1.ffn_up_exps.weight"][0] == QT[qtype]
    assert tensors["output.weight"][0] == QT[qtype]
    want = tm.make_weights(cfg, seed=1)
    for hf_name, (stored, got) in _hf_from_gguf(tensors, cfg, False).items():
        _check_values(hf_name, stored, got, want[hf_name])


def test_qk_permutation_only_for_llama_family(wide_models: dict[str, Path], tmp_path: Path) -> None:
    for arch in (a for a in ARCHS if a not in tm.MLA_ARCHS):  # MLA: checked in the round trip
        path = wide_models[arch]
        cfg = _config(path)
        tensors = ge.read_tensors(ge.export_gguf(path, tmp_path / f"{arch}.gguf", "F32"))
        want = tm.make_weights(cfg, seed=1)
        for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k")):
            direct = np.array_equal(
                tensors[f"blk.0.{gg}.weight"][1], want[f"model.layers.0.self_attn.{hf}.weight"]
            )
            assert direct is (arch not in ("llama", "mistral")), (arch, hf)


def _rope_neox(v: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """HF rotate_half RoPE on one head: pairs (i, i + d/2)."""
    half = v.shape[-1] // 2
    x, y = v[..., :half], v[..., half:]
    c, s = np.cos(theta), np.sin(theta)
    return np.concatenate([x * c - y * s, y * c + x * s], axis=-1)


def _rope_normal(v: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """ggml "normal" RoPE (llama arch) on one head: adjacent pairs (2i, 2i + 1)."""
    x, y = v[..., 0::2], v[..., 1::2]
    c, s = np.cos(theta), np.sin(theta)
    out = np.empty_like(v)
    out[..., 0::2] = x * c - y * s
    out[..., 1::2] = y * c + x * s
    return out


def test_qk_permutation_makes_llama_rope_equal_hf_rope() -> None:
    """With permuted Q/K rows, llama.cpp's RoPE gives the same attention scores as HF's."""
    rng = np.random.default_rng(0)
    n_head, n_kv, hd, hidden = 4, 2, 16, 32
    wq = rng.standard_normal((n_head * hd, hidden))
    wk = rng.standard_normal((n_kv * hd, hidden))
    x = rng.standard_normal((5, hidden))  # 5 positions
    pos = np.arange(5)[:, None]
    theta = pos * (10000.0 ** (-np.arange(hd // 2) * 2 / hd))[None, :]

    def scores(q: np.ndarray, k: np.ndarray, rope: Any) -> np.ndarray:
        q = rope(q.reshape(5, n_head, hd).transpose(1, 0, 2), theta)
        k = rope(k.reshape(5, n_kv, hd).transpose(1, 0, 2), theta)
        k = np.repeat(k, n_head // n_kv, axis=0)
        return q @ k.transpose(0, 2, 1)

    hf = scores(x @ wq.T, x @ wk.T, _rope_neox)
    wq_p, wk_p = ge.permute_qk(wq, n_head), ge.permute_qk(wk, n_kv)
    gg = scores(x @ wq_p.T, x @ wk_p.T, _rope_normal)
    np.testing.assert_allclose(gg, hf, rtol=1e-9, atol=1e-9)
    assert not np.allclose(scores(x @ wq.T, x @ wk.T, _rope_normal), hf)
    np.testing.assert_array_equal(ge.unpermute_qk(wq_p, n_head), wq)
    bias = rng.standard_normal(n_kv * hd)
    np.testing.assert_array_equal(ge.unpermute_qk(ge.permute_qk(bias, n_kv), n_kv), bias)


def test_gguf_names_agree_with_gguf_tensor_map() -> None:
    """Our HF->GGUF table against gguf-py's TensorNameMap (llama.cpp's own mapping data)."""
    for arch in ARCHS:
        cfg = tm.model_config(arch, tie_word_embeddings=False)
        tmap = gguf.get_tensor_name_map(_arch_enum(ge.GGUF_ARCH[arch]), cfg["num_hidden_layers"])
        for hf_name in tm.weight_shapes(cfg):
            if ".mlp.experts." in hf_name:
                continue  # stacked below
            # llama.cpp's converters rename it ".bias" (DeepSeek/GLM modify_tensors)
            tm_name = hf_name.replace("e_score_correction_bias", "e_score_correction.bias")
            mapped = tmap.get_name(tm_name, try_suffixes=(".weight", ".bias"))
            assert mapped == ge.gguf_name(hf_name, arch), (arch, hf_name)
            if hf_name.endswith("kv_b_proj.weight"):  # and the halves llama.cpp splits it into
                for half in ("k_b_proj", "v_b_proj"):
                    name = hf_name.replace("kv_b_proj", half)
                    want = mapped.replace("attn_kv_b", "attn_" + half[0] + "_b")
                    assert tmap.get_name(name, try_suffixes=(".weight",)) == want, name
    moe = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3MOE, 2)
    for proj in ("gate", "up", "down"):
        stacked = f"model.layers.1.mlp.experts.{proj}_proj.weight"
        assert moe.get_name(stacked, (".weight",)) == f"blk.1.ffn_{proj}_exps.weight"


def test_k_quants_fall_back_like_llama_quantize(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # hidden 64: no row splits into 256-blocks
    path = tiny_models["qwen3"]
    cfg = _config(path)
    want = tm.make_weights(cfg)
    for requested, fallback in (("Q4_K", QT.Q5_0), ("Q6_K", QT.Q8_0)):
        tensors = ge.read_tensors(ge.export_gguf(path, tmp_path / f"{requested}.gguf", requested))
        assert tensors["blk.0.attn_q.weight"][0] == fallback
        assert tensors["token_embd.weight"][0] == fallback
        for hf_name, (stored, got) in _hf_from_gguf(tensors, cfg, False).items():
            _check_values(hf_name, stored, got, want[hf_name])
    assert ge.tensor_qtype("blk.0.ffn_down.weight", (64, 48), QT.Q4_K) == QT.F16
    assert ge.tensor_qtype("blk.0.ffn_down.weight", (64, 48), QT.Q8_0) == QT.F16
    assert ge.tensor_qtype("blk.0.attn_q.bias", (64,), QT.Q8_0) == QT.F32
    assert ge.tensor_qtype("blk.0.ffn_gate_inp.weight", (8, 256), QT.Q4_K) == QT.F32
    assert ge.tensor_qtype("blk.0.ffn_up.weight", (64, 512), QT.Q3_K) == QT.Q3_K


def test_gguf_options_and_vocab_padding(tmp_path: Path) -> None:
    from mlx_lm import load

    path = tm.build_model(tmp_path / "mistral", "mistral", vocab_size=1040)
    model, _ = load(str(path))  # padded embedding rows load fine
    assert model.model.embed_tokens.weight.shape == (1040, 64)
    out = ge.export_gguf(
        path,
        tmp_path / "m.gguf",
        "BF16",
        arch_override="mistral3",
        name="Tiny Mistral",
        base_model="mistralai/Mistral-7B-Instruct-v0.3",
    )
    meta = ge.read_metadata(out)
    assert meta["general.architecture"] == "mistral3"
    assert meta["general.name"] == "Tiny Mistral"
    assert meta["mistral3.block_count"] == 2
    assert meta["general.base_model.count"] == 1
    assert meta["general.base_model.0.name"] == "Mistral-7B-Instruct-v0.3"
    assert meta["general.base_model.0.organization"] == "mistralai"
    assert meta["general.base_model.0.repo_url"] == (
        "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3"
    )
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 1040 and tokens[1039] == "[PAD1039]"
    assert types[1030] == gguf.TokenType.UNUSED
    tensors = ge.read_tensors(out)
    assert tensors["token_embd.weight"][0] == QT.BF16
    assert "output.weight" in tensors  # mistral is untied
    cfg = _config(path)
    want = tm.make_weights(cfg)
    for hf_name, (stored, got) in _hf_from_gguf(tensors, cfg, True).items():
        _check_values(hf_name, stored, got, want[hf_name])


# ------------------------------------------------------------------------------------------
# K-quant encoders against gguf-py's dequantizers


def _kquant_bound(qtype: QT, x: np.ndarray) -> np.ndarray:
    """Per-value error bound for one 256-value super-block (rows of ``x``)."""
    amax = np.abs(x).max(axis=-1, keepdims=True)
    low = np.minimum(x.min(axis=-1, keepdims=True), 0.0)
    span = x.max(axis=-1, keepdims=True) - low
    slack = 1.01
    if qtype == QT.Q2_K:
        return slack * (span / 3 * (16 / 15) / 2 - low / 15)
    if qtype == QT.Q3_K:
        return slack * (amax / 3 * (32 / 31) / 2)
    if qtype == QT.Q4_K:
        return slack * (span / 15 * (64 / 63) / 2 - low / 63)
    if qtype == QT.Q5_K:
        return slack * (span / 31 * (64 / 63) / 2 - low / 63)
    assert qtype == QT.Q6_K
    return slack * (amax / 31 * (128 / 127) / 2)


# rms error / rms value on Gaussian data must stay below these
RMS_LIMIT = {QT.Q2_K: 0.5, QT.Q3_K: 0.3, QT.Q4_K: 0.1, QT.Q5_K: 0.05, QT.Q6_K: 0.025}


def _kquant_data() -> np.ndarray:
    """Super-blocks covering the encoder's branches (signs, scales, outliers, zeros)."""
    rng = np.random.default_rng(42)
    blocks = [
        rng.standard_normal((32, 256)),
        rng.standard_normal((8, 256)) * 1e-3,
        rng.standard_normal((8, 256)) * 300.0,
        rng.uniform(0.5, 1.0, (8, 256)),  # all positive: min clamps to 0
        -rng.uniform(0.5, 1.0, (8, 256)),  # all negative
        rng.standard_t(2, (8, 256)),  # heavy tails
        np.zeros((2, 256)),
        np.full((2, 256), 0.25),
    ]
    mixed = rng.standard_normal((8, 256))
    mixed[:, ::37] *= 50.0  # outliers in some sub-blocks only
    blocks.append(mixed)
    return np.concatenate(blocks).astype(np.float32)


@pytest.mark.parametrize(
    "qtype", [QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K], ids=lambda q: str(q.name)
)
def test_k_quant_encoders_round_trip_through_gguf_dequantize(qtype: QT) -> None:
    x = _kquant_data()
    encoded = ge.quantize(x, qtype)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert encoded.dtype == np.uint8 and encoded.shape == (x.shape[0], type_size)
    y = gguf.quants.dequantize(encoded, qtype)
    assert y.shape == x.shape
    err = np.abs(y - x)
    assert np.all(err <= _kquant_bound(qtype, x) + 1e-12)
    zero_rows = np.all(x == 0, axis=1)
    assert zero_rows.sum() == 2 and np.all(y[zero_rows] == 0)  # zero blocks stay exactly zero
    gauss = slice(0, 32)
    rel = np.sqrt(((y[gauss] - x[gauss]) ** 2).mean()) / np.sqrt((x[gauss] ** 2).mean())
    assert rel < RMS_LIMIT[qtype]
    # multi-row, multi-block tensors keep their leading dimensions
    t = np.random.default_rng(0).standard_normal((3, 4, 512)).astype(np.float32)
    enc = ge.quantize(t, qtype)
    assert enc.shape == (3, 4, 2 * type_size)
    np.testing.assert_array_equal(
        gguf.quants.dequantize(enc, qtype)[1, 2],
        gguf.quants.dequantize(ge.quantize(t[1, 2], qtype), qtype),
    )
    assert block_size == 256
    with pytest.raises(ValueError, match="multiple of 256"):
        ge.quantize(np.zeros((2, 128), dtype=np.float32), qtype)


def test_k_quants_beat_or_match_legacy_quants_of_same_width() -> None:
    x = np.random.default_rng(3).standard_normal((64, 1024)).astype(np.float32)

    def rms(q: QT) -> float:
        return float(np.sqrt(((ge.dequantize(ge.quantize(x, q), q) - x) ** 2).mean()))

    assert rms(QT.Q4_K) < rms(QT.Q4_0)
    assert rms(QT.Q5_K) < rms(QT.Q5_0)
    assert rms(QT.Q6_K) < rms(QT.Q5_K) < rms(QT.Q4_K) < rms(QT.Q3_K) < rms(QT.Q2_K)


# ------------------------------------------------------------------------------------------
# MLX's own GGUF reader as an independent decoder


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q6_K", "Q2_K"])
def test_mlx_reads_exported_gguf(wide_models: dict[str, Path], tmp_path: Path, qtype: str) -> None:
    import mlx.core as mx

    out = ge.export_gguf(wide_models["qwen3_moe"], tmp_path / f"{qtype}.gguf", qtype)
    arrays, meta = mx.load(str(out), return_metadata=True)
    assert meta["general.architecture"] == "qwen3moe"
    reference = ge.read_tensors(out)
    for name, (_, ref) in reference.items():
        stem = name.removesuffix(".weight")
        if f"{stem}.scales" in arrays:  # Q4_0/Q8_0 stay quantized in MLX (affine, group 32)
            bits = 8 if qtype == "Q8_0" else 4
            got = mx.dequantize(
                arrays[name], arrays[f"{stem}.scales"], arrays[f"{stem}.biases"], 32, bits
            )
        else:
            got = arrays[name]
        got_np = np.array(got.astype(mx.float32)).reshape(ref.shape)
        tol = 0.0 if qtype == "F32" else 2e-3 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got_np, ref, rtol=0, atol=tol, err_msg=name)


@pytest.mark.xfail(
    strict=True,
    reason="MLX 0.31's GGUF reader (gguflib) decodes Q4_K's odd sub-blocks with the even "
    "sub-block's scale/min; gguf-py and llama.cpp use each sub-block's own",
)
def test_mlx_reads_q4_k_like_llama_cpp(tmp_path: Path) -> None:
    import mlx.core as mx

    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    encoded = ge.quantize(x, QT.Q4_K)
    writer.add_tensor("t", encoded, raw_dtype=QT.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    got = np.array(mx.load(str(tmp_path / "t.gguf"))["t"].astype(mx.float32))
    np.testing.assert_allclose(got, ge.dequantize(encoded, QT.Q4_K), atol=2e-3)


def test_parameter_count_matches_files(tiny_models: dict[str, Path]) -> None:
    for arch, path in tiny_models.items():
        weights, _ = tm.load_safetensors(path / "model.safetensors")
        total = sum(math.prod(a.shape) for a in weights.values())
        assert total == tm.parameter_count(_config(path)), arch
