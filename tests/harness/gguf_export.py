"""Export a tiny HF model directory to GGUF the way llama.cpp's converter lays files out.

Tests of GGUF import/serving need GGUF files without llama.cpp (its converter needs torch) and
without downloads. This module reads a directory written by ``tinymodels.build_model`` (or any
llama/mistral/qwen2/qwen3/qwen3_moe/gemma3_text/glm4_moe/deepseek_v2/deepseek_v3 safetensors
checkpoint with a byte-level BPE tokenizer.json) and writes one GGUF file with ``gguf.GGUFWriter``:

* tensor names ``token_embd``, ``blk.N.attn_q`` …, experts stacked as ``blk.N.ffn_*_exps``;
* Q/K rows permuted for archs llama.cpp runs with "normal" (GPT-J style) RoPE (llama, mistral3),
  not for NeoX-RoPE archs (qwen2, qwen3, qwen3moe, gemma3, glm4moe);
* Gemma norms stored as 1 + w, Gemma/GLM layer names and metadata as llama.cpp's Gemma3Model
  and Glm4MoeModel write them (sliding window; partial rotary, shared experts, router bias);
* DeepSeek (``DeepseekV2Model``): MLA tensors ``attn_q_a``/``attn_q_b`` (or ``attn_q``),
  ``attn_kv_a_mqa``, and ``kv_b_proj`` split per head into ``attn_k_b`` (transposed) and
  ``attn_v_b`` with attention described as one KV head of ``kv_lora_rank + rope`` dims, as
  llama.cpp writes since its MLA rework; ``legacy_mla=True`` writes the older layout instead
  (one ``attn_kv_b``, the real key/value lengths, one KV head per head);
* norms, biases and the MoE router in F32; other 2-D/3-D weights in the requested type, falling
  back like ``llama-quantize`` when a row length is not a multiple of the block size;
* K-quants (Q2_K … Q6_K) through the numpy block encoders below, because gguf-py 0.19 only
  dequantizes them. They follow the block layouts ``gguf.quants`` reads, with simple
  min/max scale search (not llama.cpp's iterative search), so error is bounded by the quant step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from tests.harness.tinymodels import (
    MLA_ARCHS,
    PRETOKENIZER_REGEX,
    PRETOKENIZER_SPLITS,
    head_dim_of,
    load_safetensors,
)

QK_K = 256

#: Types ``export_gguf`` accepts for ``qtype``.
QTYPES: tuple[str, ...] = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)
K_QUANTS: tuple[str, ...] = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

#: HF ``model_type`` -> llama.cpp arch name (what convert_hf_to_gguf.py writes by default).
GGUF_ARCH: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",  # MistralForCausalLM is converted as llama; "mistral3" is an option
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3moe",
    "gemma3_text": "gemma3",
    "glm4_moe": "glm4moe",
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek2",
}
#: ``tokenizer.ggml.pre`` per model type where llama.cpp names the same regex differently.
PRE_NAMES: dict[str, str] = {"glm4_moe": "glm4"}
#: GGUF archs llama.cpp evaluates with normal (non-NeoX) RoPE: their Q/K rows are permuted.
PERMUTED_ARCHS: frozenset[str] = frozenset({"llama", "mistral3"})

#: requested type -> ``general.file_type`` (uniform K-quants are closest to the *_S mixes)
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "Q2_K": gguf.LlamaFileType.MOSTLY_Q2_K,
    "Q3_K": gguf.LlamaFileType.MOSTLY_Q3_K_S,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_S,
    "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
}

# llama-quantize's substitutes when a row does not split into 256-blocks (it uses IQ4_NL for
# Q2_K/Q3_K, which gguf-py cannot encode: Q4_0 stands in). Then F16 if even that does not fit.
_K_FALLBACK: dict[QT, QT] = {
    QT.Q2_K: QT.Q4_0,
    QT.Q3_K: QT.Q4_0,
    QT.Q4_K: QT.Q5_0,
    QT.Q5_K: QT.Q5_1,
    QT.Q6_K: QT.Q8_0,
}

# HF per-layer suffix -> GGUF per-block suffix
_LAYER_MAP: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
}
# Gemma 3 has four norms per layer; llama.cpp calls the pre-MLP one ffn_norm.
_GEMMA3_LAYER_MAP: dict[str, str] = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}
# GLM-4 MoE: post-attention norm under its own name, router score bias, shared expert.
_GLM4_MOE_LAYER_MAP: dict[str, str] = {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
# DeepSeek MLA and MoE (kv_b_proj: attn_kv_b in the legacy layout; split by convert_tensors).
_DEEPSEEK2_LAYER_MAP: dict[str, str] = {
    "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
    "self_attn.kv_b_proj.weight": "attn_kv_b.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
_LAYER_MAPS: dict[str, dict[str, str]] = {
    "gemma3_text": _LAYER_MAP | _GEMMA3_LAYER_MAP,
    "glm4_moe": _LAYER_MAP | _GLM4_MOE_LAYER_MAP,
    "deepseek_v2": _LAYER_MAP | _DEEPSEEK2_LAYER_MAP,
    "deepseek_v3": _LAYER_MAP | _DEEPSEEK2_LAYER_MAP,
}
#: Model types whose norm weights llama.cpp stores with 1 added (Gemma's RMSNorm scales by
#: 1 + weight; llama.cpp's norm kernels multiply by the stored weight).
NORM_SHIFT: dict[str, float] = {"gemma3_text": 1.0}
_GLOBAL_MAP: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")


# --------------------------------------------------------------------------------------------
# Q/K permutation


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate-half RoPE) rows -> llama.cpp (interleaved-pair RoPE) rows, per head.

    Within each head, rows [x0..x_{d/2-1}, y0..y_{d/2-1}] become [x0, y0, x1, y1, …]. Works for
    weights (rows, in) and biases (rows,). ``n_head`` is the head count of this projection
    (attention heads for Q, KV heads for K).
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def split_kv_b(kv_b: np.ndarray, n_head: int, nope: int) -> tuple[np.ndarray, np.ndarray]:
    """HF ``kv_b_proj`` (heads * (nope + v), rank) -> llama.cpp's ``attn_k_b`` (heads, rank,
    nope: the key rows of each head, transposed) and ``attn_v_b`` (heads, v, rank)."""
    per_head = kv_b.reshape(n_head, kv_b.shape[0] // n_head, kv_b.shape[1])
    return (
        np.ascontiguousarray(per_head[:, :nope, :].transpose(0, 2, 1)),
        np.ascontiguousarray(per_head[:, nope:, :]),
    )


def join_kv_b(k_b: np.ndarray, v_b: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_kv_b`."""
    per_head = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)
    return per_head.reshape(-1, per_head.shape[-1])


# --------------------------------------------------------------------------------------------
# K-quant block encoders (input: float32 blocks of shape (n, 256); output: uint8 (n, type_size))


def _fp16_at_least(x: np.ndarray) -> np.ndarray:
    """Smallest float16 >= x (x >= 0), so a rounded super-scale never shrinks the range."""
    h = x.astype(np.float16)
    short = h.astype(np.float32) < x
    return np.where(short, np.nextafter(h, np.float16(np.inf)), h)


def _quantize_scales(sub: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block fp16 super-scale ``d`` and integer sub-scales ``q`` with ``d * q >= sub``.

    ``sub`` is (n, s) non-negative; ``q`` lies in [0, levels]. Rounding sub-scales up (not to
    nearest) keeps every value inside the representable range, so clipping never happens.
    """
    d16 = _fp16_at_least(sub.max(axis=1, keepdims=True) / levels)
    d = d16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.ceil(sub / d * (1 - 1e-6)), 0)
    return d16, np.clip(q, 0, levels).astype(np.uint8)


def _codes(x: np.ndarray, step: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """round(x / step) clipped to [lo, hi]; zero where the step is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step > 0, np.round(x / step), 0)
    return np.clip(q, lo, hi).astype(np.int16)


def _asymmetric(
    x: np.ndarray, levels: int, scale_levels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared part of Q2_K/Q4_K/Q5_K: x ≈ d*sc*q - dmin*m per sub-block (x: (n, s, len))."""
    mn = np.minimum(x.min(axis=-1), 0.0)
    scale = (x.max(axis=-1) - mn) / levels
    d16, sc = _quantize_scales(scale, scale_levels)
    dmin16, m = _quantize_scales(-mn, scale_levels)
    step = d16.astype(np.float32) * sc
    offset = dmin16.astype(np.float32) * m
    q = _codes(x + offset[..., None], step[..., None], 0, levels)
    return d16, dmin16, sc, m, q


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """OR together ``values[..., k, :] << (k * bits)`` over axis -2 (values small ints)."""
    out = np.zeros(values.shape[:-2] + values.shape[-1:], dtype=np.uint8)
    for k in range(values.shape[-2]):
        out |= (values[..., k, :].astype(np.uint8) << np.uint8(k * bits)).astype(np.uint8)
    return out


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> the 12-byte Q4_K/Q5_K scale field."""
    lo = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    mid = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=1).astype(np.uint8)


def _f16_bytes(d16: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(d16.astype(np.float16)).reshape(-1, 1).view(np.uint8)


def encode_q2_k(blocks: np.ndarray) -> np.ndarray:
    """Q2_K: 16 sub-blocks of 16, 2-bit codes, 4-bit scales and mins. 84 bytes per 256 values."""
    n = blocks.shape[0]
    d16, dmin16, sc, m, q = _asymmetric(blocks.reshape(n, 16, 16), 3, 15)
    scales = sc | (m << 4)
    qs = _pack_bits(q.reshape(n, 2, 4, 32), 2).reshape(n, 64)
    return np.concatenate([scales, qs, _f16_bytes(d16), _f16_bytes(dmin16)], axis=1)


def encode_q3_k(blocks: np.ndarray) -> np.ndarray:
    """Q3_K: 16 sub-blocks of 16, signed 3-bit codes (-4..3), 6-bit signed scales. 110 bytes."""
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    d16, sc = _quantize_scales(np.abs(x).max(axis=-1) / 3, 31)
    step = d16.astype(np.float32) * sc
    u = (_codes(x, step[..., None], -4, 3) + 4).astype(np.uint8).reshape(n, 256)
    hmask = _pack_bits((u >> 2).reshape(n, 8, 32), 1)
    qs = _pack_bits((u & 3).reshape(n, 2, 4, 32), 2).reshape(n, 64)
    s = sc.astype(np.uint8) + 32  # stored biased by 32 (range -32..31)
    low = (s[:, :8] & 0x0F) | ((s[:, 8:] & 0x0F) << 4)
    high = _pack_bits((s >> 4).reshape(n, 4, 4), 2)
    return np.concatenate([hmask, qs, low, high, _f16_bytes(d16)], axis=1)


def encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Q4_K: 8 sub-blocks of 32, 4-bit codes, 6-bit scales and mins. 144 bytes per 256 values."""
    n = blocks.shape[0]
    d16, dmin16, sc, m, q = _asymmetric(blocks.reshape(n, 8, 32), 15, 63)
    qs = _pack_bits(q.reshape(n, 4, 2, 32), 4).reshape(n, 128)
    return np.concatenate([_f16_bytes(d16), _f16_bytes(dmin16), _pack_k_scales(sc, m), qs], axis=1)


def encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Q5_K: like Q4_K with a fifth bit per value in a 32-byte high-bit plane. 176 bytes."""
    n = blocks.shape[0]
    d16, dmin16, sc, m, q = _asymmetric(blocks.reshape(n, 8, 32), 31, 63)
    qs = _pack_bits((q & 0x0F).reshape(n, 4, 2, 32), 4).reshape(n, 128)
    qh = _pack_bits((q >> 4).reshape(n, 8, 32), 1)
    scales = _pack_k_scales(sc, m)
    return np.concatenate([_f16_bytes(d16), _f16_bytes(dmin16), scales, qh, qs], axis=1)


def encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K: 16 sub-blocks of 16, signed 6-bit codes, int8 scales. 210 bytes per 256 values."""
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    d16, sc = _quantize_scales(np.abs(x).max(axis=-1) / 31, 127)
    step = d16.astype(np.float32) * sc
    u = (_codes(x, step[..., None], -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    ql = _pack_bits((u & 0x0F).reshape(n, 2, 2, 64), 4).reshape(n, 128)
    qh = _pack_bits((u >> 4).reshape(n, 2, 4, 32), 2).reshape(n, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d16)], axis=1)


_K_ENCODERS = {
    QT.Q2_K: encode_q2_k,
    QT.Q3_K: encode_q3_k,
    QT.Q4_K: encode_q4_k,
    QT.Q5_K: encode_q5_k,
    QT.Q6_K: encode_q6_k,
}


def quantize(data: np.ndarray, qtype: QT) -> np.ndarray:
    """Encode ``data`` row-wise (last axis) into ``qtype``'s GGUF byte layout.

    K-quants go through this module's encoders; everything else through ``gguf.quants.quantize``.
    F32/F16 come back as float arrays, the rest as uint8 arrays of shape (..., row_bytes).
    """
    data = np.ascontiguousarray(data, dtype=np.float32)
    encoder = _K_ENCODERS.get(qtype)
    if encoder is None:
        return np.asarray(gguf.quants.quantize(data, qtype))
    if data.shape[-1] % QK_K:
        raise ValueError(
            f"row length {data.shape[-1]} is not a multiple of {QK_K} for {qtype.name}"
        )
    encoded = encoder(data.reshape(-1, QK_K))
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    return encoded.reshape(*data.shape[:-1], data.shape[-1] // QK_K * type_size)


def dequantize(data: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 values of GGUF tensor data (thin wrapper so callers need one import)."""
    if qtype == QT.BF16 and data.dtype != np.uint8:
        data = data.view(np.uint8)
    return np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Tensor plan


def gguf_arch_for(config: Mapping[str, Any], arch_override: str | None = None) -> str:
    """The GGUF ``general.architecture`` for an HF config (``arch_override`` wins)."""
    if arch_override is not None:
        return arch_override
    model_type = str(config["model_type"])
    if model_type not in GGUF_ARCH:
        raise ValueError(f"unsupported model_type {model_type!r}")
    return GGUF_ARCH[model_type]


def gguf_name(hf_name: str, model_type: str | None = None) -> str:
    """GGUF name of a non-expert HF tensor (``model.layers.3.mlp.up_proj.weight`` -> …)."""
    if hf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[hf_name]
    layer_map = _LAYER_MAPS.get(model_type or "", _LAYER_MAP)
    match = _LAYER_RE.match(hf_name)
    if match and match.group(2) in layer_map:
        return f"blk.{match.group(1)}.{layer_map[match.group(2)]}"
    raise KeyError(f"no GGUF name for {hf_name!r}")


def norm_shift(model_type: str, hf_name: str) -> float:
    """What llama.cpp's converter adds to this tensor (Gemma norms: 1.0; otherwise 0.0)."""
    return NORM_SHIFT.get(model_type, 0.0) if hf_name.endswith("norm.weight") else 0.0


def convert_tensors(
    weights: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    arch_override: str | None = None,
    *,
    legacy_mla: bool = False,
) -> dict[str, np.ndarray]:
    """HF float32 tensors -> GGUF-named float32 tensors (Q/K permuted, experts stacked, MLA's
    kv_b split unless ``legacy_mla``).

    Order follows llama.cpp files: token_embd, then blocks in order, then output_norm/output.
    Tied models get no ``output.weight``; llama.cpp reuses ``token_embd`` then.
    """
    arch = gguf_arch_for(config, arch_override)
    model_type = str(config["model_type"])
    permute = arch in PERMUTED_ARCHS
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    out: dict[str, np.ndarray] = {}
    experts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
    tail: dict[str, np.ndarray] = {}
    for name, arr in weights.items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings", False):
            continue
        shift = norm_shift(model_type, name)
        if shift:
            arr = arr + np.float32(shift)
        layer_match = _LAYER_RE.match(name)
        if layer_match:
            bid, rest = int(layer_match.group(1)), layer_match.group(2)
            expert_match = _EXPERT_RE.match(rest)
            if expert_match:
                experts.setdefault((bid, expert_match.group(2)), {})[int(expert_match.group(1))] = (
                    arr
                )
                continue
            if rest == "self_attn.kv_b_proj.weight" and not legacy_mla:
                k_b, v_b = split_kv_b(arr, n_head, int(config["qk_nope_head_dim"]))
                out[f"blk.{bid}.attn_k_b.weight"] = k_b
                out[f"blk.{bid}.attn_v_b.weight"] = v_b
                continue
            if permute and rest.startswith("self_attn.q_proj."):
                arr = permute_qk(arr, n_head)
            elif permute and rest.startswith("self_attn.k_proj."):
                arr = permute_qk(arr, n_kv)
            out[gguf_name(name, model_type)] = arr
        elif name in ("model.norm.weight", "lm_head.weight"):
            tail[gguf_name(name)] = arr
        else:
            out[gguf_name(name)] = arr
    for (bid, proj), by_index in sorted(experts.items()):
        stacked = np.stack([by_index[e] for e in range(len(by_index))])
        out[f"blk.{bid}.ffn_{proj}_exps.weight"] = stacked
    ordered = {"token_embd.weight": out.pop("token_embd.weight")}
    block_names = sorted(out, key=lambda n: (int(n.split(".")[1]), n))
    ordered |= {n: out[n] for n in block_names}
    ordered |= dict(sorted(tail.items(), reverse=True))  # output_norm before output
    return ordered


def tensor_qtype(name: str, shape: tuple[int, ...], requested: QT) -> QT:
    """Storage type llama.cpp would pick for one tensor given the requested file type."""
    if (
        len(shape) <= 1
        or name.endswith("_norm.weight")
        or not name.endswith(".weight")
        or ".ffn_gate_inp." in name
        or requested == QT.F32
    ):
        return QT.F32
    row = shape[-1]
    qtype: QT = requested
    if row % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = _K_FALLBACK.get(qtype, QT.F16)
    if row % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = QT.F16
    return qtype


# --------------------------------------------------------------------------------------------
# Tokenizer metadata


def _pretokenizer_name(tokenizer: Mapping[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for the Split regex in tokenizer.json."""
    pre = tokenizer.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    regexes = tuple(
        (part.get("pattern") or {}).get("Regex") for part in parts if part.get("type") == "Split"
    )
    for name, splits in PRETOKENIZER_SPLITS.items():
        if regexes == splits:
            return name
    for regex in regexes:
        for name, known in PRETOKENIZER_REGEX.items():
            if regex == known:
                return name
    return "default"


def _token_id(content: str | None, vocab: Mapping[str, int]) -> int | None:
    return None if content is None else vocab.get(content)


def _special_content(value: Any) -> str | None:
    """tokenizer_config values are either strings or AddedToken dicts."""
    if isinstance(value, dict):
        return str(value.get("content"))
    return None if value is None else str(value)


def tokenizer_metadata(model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.*`` values llama.cpp writes for a byte-level BPE ("gpt2") tokenizer."""
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    added = {t["content"]: t for t in tok.get("added_tokens", [])}
    for content, info in added.items():
        vocab[content] = int(info["id"])
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(max(vocab_size, len(by_id))):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = by_id[i]
        tokens.append(text)
        if text in added:
            special = added[text]["special"]
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    bos = _token_id(_special_content(tok_cfg.get("bos_token")), vocab)
    if bos is None and isinstance(config.get("bos_token_id"), int):
        bos = config["bos_token_id"]
    eos = _token_id(_special_content(tok_cfg.get("eos_token")), vocab)
    if eos is None:
        eos_cfg = config.get("eos_token_id")
        eos = eos_cfg[0] if isinstance(eos_cfg, list) else eos_cfg
    meta: dict[str, Any] = {
        "model": "gpt2",
        "pre": _pretokenizer_name(tok),
        "tokens": tokens,
        "token_type": types,
        "merges": merges,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "padding_token_id": _token_id(_special_content(tok_cfg.get("pad_token")), vocab),
        "add_bos_token": bool(tok_cfg.get("add_bos_token", False)),
        "add_eos_token": bool(tok_cfg.get("add_eos_token", False)),
        "chat_template": tok_cfg.get("chat_template"),
    }
    return meta


# --------------------------------------------------------------------------------------------
# Export


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    qtype: str = "F16",
    *,
    arch_override: str | None = None,
    name: str | None = None,
    base_model: str | None = None,
    legacy_mla: bool = False,
) -> Path:
    """Write ``model_dir`` as a single GGUF file of type ``qtype`` (see :data:`QTYPES`).

    ``arch_override`` replaces ``general.architecture`` (e.g. ``"mistral3"`` for a mistral model;
    Q/K are permuted for llama/mistral3). ``base_model`` (``"org/name"``) adds the
    ``general.base_model.0.*`` keys a converter writes for a fine-tune or quantization.
    ``legacy_mla``: DeepSeek files as llama.cpp wrote them before its MLA rework.
    """
    if qtype not in QTYPES:
        raise ValueError(f"unsupported qtype {qtype!r}; expected one of {QTYPES}")
    model_dir = Path(model_dir)
    out_path = Path(out_path)
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = gguf_arch_for(config, arch_override)
    weights, _ = load_safetensors(model_dir / "model.safetensors")
    tensors = convert_tensors(weights, config, arch_override, legacy_mla=legacy_mla)
    requested = QT[qtype]

    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_type("model")
    writer.add_name(name or model_dir.name)
    if base_model is not None:
        org, _, base_name = base_model.rpartition("/")
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base_name)
        if org:
            writer.add_base_model_organization(0, org)
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{base_model}")

    n_head = int(config["num_attention_heads"])
    head_dim = head_dim_of(config)
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    if config["model_type"] in MLA_ARCHS:
        _mla_metadata(writer, config, legacy_mla)
    else:
        writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(
            int(head_dim * float(config.get("partial_rotary_factor", 1.0)))
        )
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if arch == "gemma3":
        # llama.cpp's Gemma3Model: the window size only; pattern (6), local rope base (10000)
        # and the attention scale are implied by the arch. It refuses other values.
        if (
            config.get("sliding_window_pattern", 6) != 6
            or config.get("rope_local_base_freq", 10000.0) != 10000.0
        ):
            raise ValueError("llama.cpp's gemma3 fixes sliding_window_pattern 6, local base 1e4")
        if config.get("query_pre_attn_scalar", head_dim) != head_dim:
            raise ValueError("llama.cpp's gemma3 scales attention by 1/sqrt(head_dim)")
        writer.add_sliding_window(int(config["sliding_window"]))
    if config.get("num_experts"):
        writer.add_expert_count(int(config["num_experts"]))
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))
        writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
    if arch == "glm4moe":  # llama.cpp's Glm4MoeModel.set_gguf_parameters
        writer.add_expert_count(int(config["n_routed_experts"]))
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))
        writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
        writer.add_expert_shared_count(int(config["n_shared_experts"]))
        writer.add_leading_dense_block_count(int(config["first_k_dense_replace"]))
        writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        writer.add_expert_weights_scale(float(config["routed_scaling_factor"]))
        writer.add_expert_weights_norm(bool(config["norm_topk_prob"]))
        writer.add_nextn_predict_layers(int(config.get("num_nextn_predict_layers", 0)))
    writer.add_file_type(int(FILE_TYPES[qtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tok = tokenizer_metadata(model_dir, int(config["vocab_size"]))
    writer.add_tokenizer_model(tok["model"])
    writer.add_tokenizer_pre(PRE_NAMES.get(str(config["model_type"]), tok["pre"]))
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["token_type"])
    writer.add_token_merges(tok["merges"])
    for key, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("padding_token_id", writer.add_pad_token_id),
    ):
        if tok[key] is not None:
            add(int(tok[key]))
    writer.add_add_bos_token(tok["add_bos_token"])
    writer.add_add_eos_token(tok["add_eos_token"])
    if tok["chat_template"]:
        writer.add_chat_template(tok["chat_template"])

    for tensor_name, arr in tensors.items():
        storage = tensor_qtype(tensor_name, arr.shape, requested)
        data = quantize(arr, storage)
        if storage in (QT.F32, QT.F16):
            writer.add_tensor(tensor_name, data)
        else:
            writer.add_tensor(tensor_name, data, raw_dtype=storage)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _mla_metadata(writer: gguf.GGUFWriter, config: Mapping[str, Any], legacy: bool) -> None:
    """What llama.cpp's DeepseekV2Model (and the base TextModel) write for DeepSeek V2/V3."""
    n_head = int(config["num_attention_heads"])
    kv_rank, rope = int(config["kv_lora_rank"]), int(config["qk_rope_head_dim"])
    nope, v = int(config["qk_nope_head_dim"]), int(config["v_head_dim"])
    if config.get("q_lora_rank"):
        writer.add_q_lora_rank(int(config["q_lora_rank"]))
    writer.add_kv_lora_rank(kv_rank)
    if legacy:
        writer.add_head_count_kv(n_head)
        writer.add_key_length(nope + rope)
        writer.add_value_length(v)
    else:  # MLA as MQA: one KV head of the latent (+ the shared rotary key)
        writer.add_head_count_kv(1)
        writer.add_key_length(kv_rank + rope)
        writer.add_value_length(kv_rank)
        writer.add_key_length_mla(nope + rope)
        writer.add_value_length_mla(v)
    writer.add_rope_dimension_count(rope)
    writer.add_leading_dense_block_count(int(config["first_k_dense_replace"]))
    writer.add_expert_count(int(config["n_routed_experts"]))
    writer.add_expert_used_count(int(config["num_experts_per_tok"]))
    writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
    writer.add_expert_shared_count(int(config.get("n_shared_experts") or 0))
    writer.add_expert_weights_scale(float(config["routed_scaling_factor"]))
    if config.get("norm_topk_prob"):  # written only when true
        writer.add_expert_weights_norm(True)
    writer.add_expert_group_count(int(config["n_group"]))
    writer.add_expert_group_used_count(int(config["topk_group"]))
    gating = {"sigmoid": gguf.ExpertGatingFuncType.SIGMOID}
    writer.add_expert_gating_func(
        gating.get(str(config["scoring_func"]), gguf.ExpertGatingFuncType.SOFTMAX)
    )
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        # llama.cpp's deepseek2 convention: 0.1 * mscale_all_dim (it assumes mscale equal)
        writer.add_rope_scaling_yarn_log_mul(0.1 * float(scaling["mscale_all_dim"]))


# --------------------------------------------------------------------------------------------
# Reading back


def read_metadata(path: str | Path) -> dict[str, Any]:
    """All key/value fields of a GGUF file as Python values (strings, ints, lists …)."""
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


def read_tensors(path: str | Path) -> dict[str, tuple[QT, np.ndarray]]:
    """Every tensor as (storage type, float32 values in numpy (row-major) shape)."""
    reader = gguf.GGUFReader(str(path))
    out: dict[str, tuple[QT, np.ndarray]] = {}
    for t in reader.tensors:
        qtype = QT(int(t.tensor_type))
        values = dequantize(np.asarray(t.data), qtype)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = (qtype, values.reshape(shape))
    return out
