"""GGUF architectures local-ai converts, and how each maps to the config and tensor names mlx-lm
expects. Pure data and standard library: the CLI shows :data:`GGUF_ARCHITECTURES` in ``--help``.

Facts carried over from llama.cpp (convert_hf_to_gguf.py, gguf-py's tensor map):

* metadata keys are ``<arch>.<name>`` (``qwen3.embedding_length``, ``llama.attention.head_count``);
* tensor names are ``token_embd``, ``blk.N.attn_q``, ``blk.N.ffn_gate_exps`` …;
* for archs llama.cpp runs with "normal" (GPT-J style, adjacent pairs) RoPE, the converter
  permutes the rows of Q and K within each head (``[x0..x_{d/2-1}, y0..] -> [x0, y0, x1, …]``);
  we undo it so MLX's rotate-half RoPE sees the original HuggingFace rows;
* tied embeddings: a file without ``output.weight`` reuses ``token_embd`` as the output layer;
* MoE experts are stored stacked, ``(n_expert, out, in)``, which is mlx-lm's ``switch_mlp`` layout;
* Gemma 3 (``Gemma3Model``): every ``*norm.weight`` is stored with 1 added (HF's RMSNorm scales by
  ``1 + w``), the pre-MLP norm is ``ffn_norm`` and the post norms ``post_attention_norm`` /
  ``post_ffw_norm``; only the window size is metadata: the pattern (every 6th layer global), the
  local RoPE base (10000) and the attention scale (1/sqrt(head_dim), hidden/heads for the
  62-layer 27B) are fixed by llama.cpp's loader. The sqrt(hidden) embedding scale is applied at
  run time by both llama.cpp and mlx-lm, so the stored embedding is HF's;
* GLM-4 MoE (``Glm4MoeModel``): NeoX RoPE on ``rope.dimension_count`` of each head's dims, the
  router's score-correction bias as ``exp_probs_b.bias``, shared experts as ``ffn_*_shexp``, and
  ``nextn_predict_layers`` multi-token-prediction blocks after the decoder layers;
* DeepSeek-V2/V3 (``DeepseekV2Model``, arch ``deepseek2``): multi-head latent attention with no
  Q/K permutation (mlx-lm's MLA RoPE is the interleaved kind llama.cpp runs). Since llama.cpp's
  MLA rework the file describes attention as one KV head of ``kv_lora_rank + rope`` dims
  (``key_length``/``value_length``), with the real head sizes in ``key_length_mla`` and
  ``value_length_mla``, and ``kv_b_proj`` split per head into ``attn_k_b`` (the key half,
  transposed: heads x rank x nope) and ``attn_v_b`` (heads x v x rank); older files keep
  ``attn_kv_b`` and the plain key/value lengths. mlx-lm's ``deepseek_v3`` holds the split halves
  itself (``embed_q``/``unembed_out``), its ``deepseek_v2`` the whole ``kv_b_proj``; the
  converter re-splits or re-joins whichever the file has. Softmax gating (absent key: V2 files)
  selects ``deepseek_v2``, sigmoid ``deepseek_v3``; YaRN's attention factor is stored as
  ``rope.scaling.yarn_log_multiplier`` = 0.1 * ``mscale_all_dim``.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from local_ai.convert.gguf_reader import GGUFFile, TensorInfo
from local_ai.convert.recipe import Recipe
from local_ai.errors import MalformedFileError, NotYetError


@dataclass(frozen=True)
class ArchMap:
    gguf_arch: str
    model_type: str  # mlx-lm model module / config model_type
    hf_class: str
    permuted_qk: bool  # llama.cpp permuted Q/K rows for its normal-RoPE kernels
    moe: bool = False
    norm_shift: float = 0.0  # llama.cpp added this to every *norm.weight (Gemma: 1.0)
    end_of_turn: tuple[str, ...] = ()  # control tokens that also end generation, by text


_ARCHS: Final[tuple[ArchMap, ...]] = (
    ArchMap("llama", "llama", "LlamaForCausalLM", permuted_qk=True),
    # Mistral-Small-3.x text weights; converted to a llama-layout model (mlx-lm maps mistral too).
    ArchMap("mistral3", "mistral", "MistralForCausalLM", permuted_qk=True),
    ArchMap("qwen2", "qwen2", "Qwen2ForCausalLM", permuted_qk=False),
    ArchMap("qwen3", "qwen3", "Qwen3ForCausalLM", permuted_qk=False),
    ArchMap("qwen3moe", "qwen3_moe", "Qwen3MoeForCausalLM", permuted_qk=False, moe=True),
    ArchMap(
        "gemma3",
        "gemma3_text",
        "Gemma3ForCausalLM",
        permuted_qk=False,
        norm_shift=1.0,
        end_of_turn=("<end_of_turn>",),
    ),
    ArchMap("glm4moe", "glm4_moe", "Glm4MoeForCausalLM", permuted_qk=False),
    # deepseek_v2 instead when the router is softmax-gated (hf_config decides per file).
    ArchMap("deepseek2", "deepseek_v3", "DeepseekV3ForCausalLM", permuted_qk=False),
)
ARCHS: Final[dict[str, ArchMap]] = {a.gguf_arch: a for a in _ARCHS}

#: GGUF ``general.architecture`` values ``models convert`` accepts (shown by ``--help``).
GGUF_ARCHITECTURES: Final[tuple[str, ...]] = tuple(ARCHS)
#: Next in line (mlx-lm supports them; local-ai's maps for them are not written yet).
PLANNED_GGUF_ARCHITECTURES: Final[tuple[str, ...]] = ()

# Ceilings on what metadata may claim before a model skeleton is built from it.
_MAX_LAYERS = 1024
_MAX_HEADS = 1024
_MAX_EXPERTS = 4096
_MAX_WIDTH = 1 << 20


def arch_for(gguf: GGUFFile) -> ArchMap:
    name = gguf.architecture
    arch = ARCHS.get(name)
    if arch is None:
        planned = " (planned)" if name in PLANNED_GGUF_ARCHITECTURES else ""
        raise NotYetError(
            f"{gguf.path}: GGUF architecture {name!r}{planned} is not supported yet",
            hint=f"supported: {', '.join(GGUF_ARCHITECTURES)}; convert the original safetensors "
            "repo instead if it exists",
        )
    return arch


# ------------------------------------------------------------------------------------- config


def hf_config(gguf: GGUFFile) -> dict[str, Any]:
    """The config.json mlx-lm needs, from GGUF metadata (and tensor presence for flags that
    llama.cpp does not store as metadata: biases, tied output, dense layers in MoE models)."""
    arch = arch_for(gguf)
    a = arch.gguf_arch

    def key(name: str) -> str:
        return f"{a}.{name}"

    hidden = gguf.get_int(key("embedding_length"), minimum=1, maximum=_MAX_WIDTH)
    layers = gguf.get_int(key("block_count"), minimum=1, maximum=_MAX_LAYERS)
    # Multi-token-prediction blocks llama.cpp appends (GLM-4.5's nextn layer); mlx-lm drops them.
    layers -= mtp_layers(gguf)
    if layers < 1:
        raise _bad(gguf, key("nextn_predict_layers"), "leaves no decoder layers")
    n_head = gguf.get_int(key("attention.head_count"), minimum=1, maximum=_MAX_HEADS)
    if a == "deepseek2":
        return _deepseek2_config(gguf, hidden, layers, n_head)
    n_kv = gguf.get_int(key("attention.head_count_kv"), n_head, minimum=1, maximum=n_head)
    if n_head % n_kv:
        raise _bad(gguf, key("attention.head_count_kv"), f"{n_kv} does not divide {n_head} heads")
    head_dim = gguf.get_int(
        key("attention.key_length"), hidden // n_head, minimum=1, maximum=_MAX_WIDTH
    )
    if head_dim < 1:
        raise _bad(gguf, key("attention.head_count"), f"{n_head} heads exceed hidden size {hidden}")
    value_dim = gguf.get_int(key("attention.value_length"), head_dim, minimum=1)
    if value_dim != head_dim:
        raise NotYetError(
            f"{gguf.path}: attention with key length {head_dim} != value length {value_dim} "
            f"is not supported for {a}"
        )
    rope_dims = gguf.get_int(key("rope.dimension_count"), head_dim, minimum=1, maximum=head_dim)
    if rope_dims != head_dim and a != "glm4moe":
        raise NotYetError(
            f"{gguf.path}: partial rotary embeddings ({rope_dims} of {head_dim} dims) are not "
            f"supported for {a}"
        )
    embed = _tensor(gguf, "token_embd.weight")
    if len(embed.shape) != 2 or embed.shape[1] != hidden:
        raise _bad_tensor(gguf, embed, f"shape {embed.shape} does not match hidden size {hidden}")
    vocab = embed.shape[0]
    context = gguf.get_int(key("context_length"), 4096, minimum=1, maximum=1 << 31)
    cfg: dict[str, Any] = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": gguf.get_float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": gguf.get_float(key("rope.freq_base"), 10000.0),
        "max_position_embeddings": context,
        "vocab_size": vocab,
        "tie_word_embeddings": gguf.tensor("output.weight") is None,
        "hidden_act": "silu",
    }
    scaling = _rope_scaling(gguf, a, head_dim, cfg["rope_theta"])
    if scaling is not None:
        cfg["rope_scaling"] = scaling

    dense_ffn = gguf.get_int(key("feed_forward_length"), 0, minimum=0, maximum=_MAX_WIDTH)
    if arch.model_type == "qwen2":
        if head_dim * n_head != hidden:
            raise NotYetError(f"{gguf.path}: qwen2 requires head_dim * heads == hidden size")
        del cfg["head_dim"]
    if arch.model_type in ("llama", "mistral"):
        cfg["attention_bias"] = gguf.tensor("blk.0.attn_q.bias") is not None
        cfg["mlp_bias"] = gguf.tensor("blk.0.ffn_up.bias") is not None
    if arch.moe:
        n_exp = gguf.get_int(key("expert_count"), minimum=1, maximum=_MAX_EXPERTS)
        used = gguf.get_int(key("expert_used_count"), minimum=1, maximum=n_exp)
        moe_ffn = gguf.get_int(key("expert_feed_forward_length"), minimum=1, maximum=_MAX_WIDTH)
        dense_layers = [
            i for i in range(layers) if gguf.tensor(f"blk.{i}.ffn_gate_exps.weight") is None
        ]
        cfg |= {
            "num_experts": n_exp,
            "num_experts_per_tok": used,
            "moe_intermediate_size": moe_ffn,
            "decoder_sparse_step": 1,
            "mlp_only_layers": dense_layers,
            # llama.cpp always renormalises the top-k weights for qwen3moe.
            "norm_topk_prob": True,
        }
        if dense_layers and not dense_ffn:
            raise _bad(gguf, key("feed_forward_length"), "required for the dense layers")
        dense_ffn = dense_ffn or moe_ffn
    elif not dense_ffn:
        raise _bad(gguf, key("feed_forward_length"), "required key is missing")
    cfg["intermediate_size"] = dense_ffn
    if a == "gemma3":
        cfg |= _gemma3_config(gguf, layers, hidden, n_head, head_dim)
        del cfg["hidden_act"]
    if a == "glm4moe":
        if "rope_scaling" in cfg:  # mlx-lm's glm4_moe applies plain RoPE only
            raise NotYetError(f"{gguf.path}: glm4moe with rope scaling is not supported yet")
        cfg |= _glm4moe_config(gguf, layers, head_dim, rope_dims)
        cfg["rope_scaling"] = None  # a required field of mlx-lm's ModelArgs
    return dict(sorted(cfg.items()))


def mtp_layers(gguf: GGUFFile) -> int:
    a = gguf.architecture
    if a not in _MTP_ARCHS:
        return 0
    return gguf.get_int(f"{a}.nextn_predict_layers", 0, minimum=0, maximum=_MAX_LAYERS)


_MTP_ARCHS: Final = frozenset({"glm4moe", "deepseek2"})
_SOFTMAX_GATING: Final = 1  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX
_SIGMOID_GATING: Final = 2  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID


def _common_config(gguf: GGUFFile, hidden: int, layers: int) -> dict[str, Any]:
    """Keys every arch shares: sizes, norms, RoPE base, vocabulary (from the embedding)."""
    a = gguf.architecture
    embed = _tensor(gguf, "token_embd.weight")
    if len(embed.shape) != 2 or embed.shape[1] != hidden:
        raise _bad_tensor(gguf, embed, f"shape {embed.shape} does not match hidden size {hidden}")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "rms_norm_eps": gguf.get_float(f"{a}.attention.layer_norm_rms_epsilon"),
        "rope_theta": gguf.get_float(f"{a}.rope.freq_base", 10000.0),
        "max_position_embeddings": gguf.get_int(
            f"{a}.context_length", 4096, minimum=1, maximum=1 << 31
        ),
        "vocab_size": embed.shape[0],
        "tie_word_embeddings": gguf.tensor("output.weight") is None,
    }


def _deepseek2_config(gguf: GGUFFile, hidden: int, layers: int, n_head: int) -> dict[str, Any]:
    """DeepSeek-V2/V3 (llama.cpp's DeepseekV2Model): MLA attention and a DeepSeek MoE."""

    def key(name: str) -> str:
        return f"deepseek2.{name}"

    cfg = _common_config(gguf, hidden, layers)
    if cfg["tie_word_embeddings"]:
        raise NotYetError(f"{gguf.path}: deepseek2 without an output tensor (tied embeddings)")
    kv_rank = gguf.get_int(key("attention.kv_lora_rank"), minimum=1, maximum=_MAX_WIDTH)
    rope = gguf.get_int(key("rope.dimension_count"), minimum=2, maximum=_MAX_WIDTH)
    if rope % 2:
        raise _bad(gguf, key("rope.dimension_count"), f"{rope} is odd")
    if gguf.has(key("attention.key_length_mla")):
        qk_head = gguf.get_int(key("attention.key_length_mla"), minimum=1, maximum=_MAX_WIDTH)
        v_head = gguf.get_int(key("attention.value_length_mla"), minimum=1, maximum=_MAX_WIDTH)
    else:  # files from before llama.cpp's MLA rework: the plain lengths are the head sizes
        qk_head = gguf.get_int(key("attention.key_length"), minimum=1, maximum=_MAX_WIDTH)
        v_head = gguf.get_int(key("attention.value_length"), minimum=1, maximum=_MAX_WIDTH)
        if gguf.tensor("blk.0.attn_kv_b.weight") is None:
            raise _bad(gguf, key("attention.key_length_mla"), "required with attn_k_b/attn_v_b")
    if qk_head <= rope:
        raise _bad(gguf, key("rope.dimension_count"), f"{rope} leaves no non-rotary key dims")
    q_rank: int | None = None
    if gguf.has(key("attention.q_lora_rank")):
        q_rank = gguf.get_int(key("attention.q_lora_rank"), minimum=0, maximum=_MAX_WIDTH) or None
    elif (q_a := gguf.tensor("blk.0.attn_q_a.weight")) is not None:
        q_rank = q_a.shape[0]

    gating = gguf.get_int(key("expert_gating_func"), _SOFTMAX_GATING, minimum=0, maximum=16)
    if gating == 0:  # llama.cpp's loader: "none" means softmax (V2/V2.5 files lack the key)
        gating = _SOFTMAX_GATING
    if gating not in (_SOFTMAX_GATING, _SIGMOID_GATING):
        raise NotYetError(f"{gguf.path}: deepseek2 with expert gating function {gating}")
    sigmoid = gating == _SIGMOID_GATING
    model_type, hf_class = (
        ("deepseek_v3", "DeepseekV3ForCausalLM")
        if sigmoid
        else ("deepseek_v2", "DeepseekV2ForCausalLM")
    )
    n_exp: int | None = None
    if gguf.has(key("expert_count")):
        n_exp = gguf.get_int(key("expert_count"), minimum=1, maximum=_MAX_EXPERTS)
    dense_ffn = gguf.get_int(key("feed_forward_length"), 0, minimum=0, maximum=_MAX_WIDTH)
    cfg |= {
        "architectures": [hf_class],
        "model_type": model_type,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head,  # MLA decompresses to one K/V per head
        "q_lora_rank": q_rank,
        "kv_lora_rank": kv_rank,
        "qk_rope_head_dim": rope,
        "qk_nope_head_dim": qk_head - rope,
        "v_head_dim": v_head,
        "attention_bias": False,
        "n_routed_experts": n_exp,
        "moe_layer_freq": 1,
        "first_k_dense_replace": layers,
    }
    if n_exp is not None:
        dense = gguf.get_int(key("leading_dense_block_count"), 0, minimum=0, maximum=layers)
        groups = gguf.get_int(key("expert_group_count"), 1, minimum=1, maximum=n_exp)
        if n_exp % groups:
            raise _bad(gguf, key("expert_group_count"), f"{groups} does not divide {n_exp}")
        shared = gguf.get_int(key("expert_shared_count"), 0, minimum=0, maximum=_MAX_EXPERTS)
        norm = gguf.get_bool(key("expert_weights_norm"), False)
        if norm and not sigmoid:
            raise NotYetError(
                f"{gguf.path}: deepseek2 with softmax gating and renormalised expert weights "
                "(mlx-lm's deepseek_v2 does not renormalise)"
            )
        cfg |= {
            "first_k_dense_replace": dense,
            "num_experts_per_tok": gguf.get_int(key("expert_used_count"), minimum=1, maximum=n_exp),
            "moe_intermediate_size": gguf.get_int(
                key("expert_feed_forward_length"), minimum=1, maximum=_MAX_WIDTH
            ),
            # mlx-lm builds a shared MLP whenever the count is not None.
            "n_shared_experts": shared or None,
            "routed_scaling_factor": gguf.get_float(key("expert_weights_scale"), 1.0),
            "norm_topk_prob": norm,
            "n_group": groups,
            "topk_group": gguf.get_int(
                key("expert_group_used_count"), groups, minimum=1, maximum=groups
            ),
            "scoring_func": "sigmoid" if sigmoid else "softmax",
            "topk_method": (
                "noaux_tc" if sigmoid else "group_limited_greedy" if groups > 1 else "greedy"
            ),
        }
        if sigmoid and dense < layers and gguf.tensor(f"blk.{dense}.exp_probs_b.bias") is None:
            raise NotYetError(
                f"{gguf.path}: sigmoid-gated deepseek2 without exp_probs_b (the router's "
                "score-correction bias mlx-lm's deepseek_v3 needs)"
            )
    if cfg["first_k_dense_replace"] and not dense_ffn:
        raise _bad(gguf, key("feed_forward_length"), "required for the dense layers")
    cfg["intermediate_size"] = dense_ffn or cfg.get("moe_intermediate_size", 1)
    scaling = _rope_scaling(gguf, "deepseek2", rope, cfg["rope_theta"])
    if scaling is not None and scaling.get("rope_type") == "llama3":
        raise NotYetError(f"{gguf.path}: deepseek2 with a rope_freqs tensor")
    if scaling is not None and scaling["type"] == "yarn":
        # llama.cpp scales attention by (1 + log_mul * ln(factor))^2 and leaves RoPE's own
        # magnitude at 1: HF's mscale_all_dim = log_mul / 0.1, with mscale equal to it.
        log_mul = gguf.get_float(key("rope.scaling.yarn_log_multiplier"), 0.0)
        scaling["mscale"] = scaling["mscale_all_dim"] = round(log_mul / 0.1, 6)
    if scaling is None and model_type == "deepseek_v2":
        # mlx-lm's deepseek_v2 always builds YaRN; factor 1 is plain RoPE.
        scaling = {
            "type": "yarn",
            "factor": 1.0,
            "original_max_position_embeddings": cfg["max_position_embeddings"],
        }
    cfg["rope_scaling"] = scaling
    return dict(sorted(cfg.items()))


def _glm4moe_config(gguf: GGUFFile, layers: int, head_dim: int, rope_dims: int) -> dict[str, Any]:
    """GLM-4.5 style MoE (llama.cpp's Glm4MoeModel): sigmoid router with a score-correction
    bias (``exp_probs_b``), shared experts, ``leading_dense_block_count`` dense layers first."""

    def key(name: str) -> str:
        return f"glm4moe.{name}"

    gating = gguf.get_int(key("expert_gating_func"), _SIGMOID_GATING, minimum=0, maximum=16)
    if gating != _SIGMOID_GATING:
        raise NotYetError(f"{gguf.path}: glm4moe with expert gating function {gating}")
    n_exp = gguf.get_int(key("expert_count"), minimum=1, maximum=_MAX_EXPERTS)
    used = gguf.get_int(key("expert_used_count"), minimum=1, maximum=n_exp)
    dense = gguf.get_int(key("leading_dense_block_count"), 0, minimum=0, maximum=layers)
    shared = gguf.get_int(key("expert_shared_count"), 0, minimum=0, maximum=_MAX_EXPERTS)
    groups = gguf.get_int(key("expert_group_count"), 1, minimum=1, maximum=n_exp)
    if n_exp % groups:
        raise _bad(gguf, key("expert_group_count"), f"{groups} does not divide {n_exp} experts")
    if gguf.tensor("output.weight") is None:
        raise NotYetError(f"{gguf.path}: glm4moe without an output tensor (tied embeddings)")
    return {
        "attention_bias": gguf.tensor("blk.0.attn_q.bias") is not None,
        "use_qk_norm": gguf.tensor("blk.0.attn_q_norm.weight") is not None,
        "partial_rotary_factor": rope_dims / head_dim,
        "n_routed_experts": n_exp,
        "num_experts_per_tok": used,
        "moe_intermediate_size": gguf.get_int(
            key("expert_feed_forward_length"), minimum=1, maximum=_MAX_WIDTH
        ),
        # mlx-lm builds a shared MLP whenever the count is not None.
        "n_shared_experts": shared or None,
        "first_k_dense_replace": dense,
        "routed_scaling_factor": gguf.get_float(key("expert_weights_scale"), 1.0),
        "norm_topk_prob": gguf.get_bool(key("expert_weights_norm"), False),
        "n_group": groups,
        "topk_group": gguf.get_int(key("expert_group_used_count"), 1, minimum=1, maximum=groups),
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "num_nextn_predict_layers": 0,
    }


# llama.cpp's loader fixes these for gemma3 (llama-model.cpp, LLM_ARCH_GEMMA3).
_GEMMA3_SWA_PATTERN: Final = 6
_GEMMA3_LOCAL_ROPE_BASE: Final = 10000.0


def _gemma3_config(
    gguf: GGUFFile, layers: int, hidden: int, n_head: int, head_dim: int
) -> dict[str, Any]:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if gguf.has(f"gemma3.{key}"):
            raise NotYetError(f"{gguf.path}: gemma3 with {key} is not supported by mlx-lm")
    pattern = _GEMMA3_SWA_PATTERN
    if gguf.has("gemma3.attention.sliding_window_pattern"):
        pattern = gguf.get_int(
            "gemma3.attention.sliding_window_pattern", minimum=1, maximum=_MAX_LAYERS
        )
    window = gguf.get_int("gemma3.attention.sliding_window", minimum=1, maximum=1 << 31)
    return {
        "attention_bias": False,
        "hidden_activation": "gelu_pytorch_tanh",
        # Gemma 3 27B (62 layers) scales queries by hidden/heads, the others by head_dim.
        "query_pre_attn_scalar": hidden // n_head if layers == 62 else head_dim,
        "rope_local_base_freq": _GEMMA3_LOCAL_ROPE_BASE,
        "sliding_window": window,
        "sliding_window_pattern": pattern,
    }


def _rope_scaling(gguf: GGUFFile, a: str, head_dim: int, theta: float) -> dict[str, Any] | None:
    kind = gguf.get_str(f"{a}.rope.scaling.type", "none")
    if kind == "none":
        scaling = None
    elif kind == "linear":
        scaling = {"type": "linear", "factor": gguf.get_float(f"{a}.rope.scaling.factor")}
    elif kind == "yarn":
        scaling = {
            "type": "yarn",
            "factor": gguf.get_float(f"{a}.rope.scaling.factor"),
            "original_max_position_embeddings": gguf.get_int(
                f"{a}.rope.scaling.original_context_length", minimum=1
            ),
        }
        for gkey, hkey in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if gguf.has(f"{a}.rope.scaling.{gkey}"):
                scaling[hkey] = gguf.get_float(f"{a}.rope.scaling.{gkey}")
    else:
        raise NotYetError(f"{gguf.path}: rope scaling type {kind!r} is not supported yet")
    if gguf.tensor("rope_freqs.weight") is not None:
        if scaling is not None:
            raise NotYetError(f"{gguf.path}: rope_freqs together with {kind} scaling")
        return _llama3_scaling(gguf, head_dim, theta)
    return scaling


def _llama3_scaling(gguf: GGUFFile, head_dim: int, theta: float) -> dict[str, Any]:
    """llama.cpp stores Llama-3.1-style rope scaling as a ``rope_freqs`` tensor of per-frequency
    divisors; HF configs store its parameters. The tensor is checked against the parameters every
    released Llama 3.x uses (low 1, high 4, original context 8192) with the factor it implies."""
    info = _tensor(gguf, "rope_freqs.weight")
    if info.type.name != "F32" or info.shape != (head_dim // 2,):
        raise _bad_tensor(gguf, info, f"expected F32 of shape ({head_dim // 2},)")
    with gguf.path.open("rb") as handle:
        handle.seek(info.offset)
        raw = handle.read(info.nbytes)
    factors = [v for (v,) in struct.iter_unpack("<f", raw)]
    params: dict[str, Any] = {
        "factor": max(factors),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    expected = llama3_rope_factors(head_dim, theta, **params)
    if not all(math.isclose(x, y, rel_tol=1e-4) for x, y in zip(factors, expected, strict=True)):
        raise NotYetError(
            f"{gguf.path}: rope_freqs does not match Llama-3 rope scaling with standard parameters"
        )
    return {"rope_type": "llama3", **params}


def llama3_rope_factors(
    head_dim: int,
    theta: float,
    *,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> list[float]:
    """Per-frequency divisors of Llama-3 rope scaling, as llama.cpp's converter writes them."""
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi / (1.0 / theta ** (i / head_dim))
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


# ------------------------------------------------------------------------------------ tensors

_GLOBAL: Final[dict[str, str]] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK: Final[dict[str, str]] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "ffn_gate_exps.weight": "mlp.switch_mlp.gate_proj.weight",
    "ffn_up_exps.weight": "mlp.switch_mlp.up_proj.weight",
    "ffn_down_exps.weight": "mlp.switch_mlp.down_proj.weight",
}
# Per-arch block names that differ from (or add to) _BLOCK.
_BLOCK_OVERRIDES: Final[dict[str, dict[str, str]]] = {
    "gemma3": {
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    },
    "glm4moe": {
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
        "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
        "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
        "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
    },
    "deepseek2": {
        "attn_q_a.weight": "self_attn.q_a_proj.weight",
        "attn_q_a_norm.weight": "self_attn.q_a_layernorm.weight",
        "attn_q_b.weight": "self_attn.q_b_proj.weight",
        "attn_kv_a_mqa.weight": "self_attn.kv_a_proj_with_mqa.weight",
        "attn_kv_a_norm.weight": "self_attn.kv_a_layernorm.weight",
        "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
        "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
        "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
        "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
    },
}
# MLA's kv_b projection: llama.cpp file names -> parts of mlx-lm parameters (see _mla_plans).
_MLA_TENSORS: Final = frozenset({"attn_kv_b.weight", "attn_k_b.weight", "attn_v_b.weight"})
# Tensors llama.cpp stores that carry no weights of their own in MLX (folded into config).
_CONFIG_ONLY: Final = frozenset({"rope_freqs.weight"})
_BLOCK_RE: Final = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class MLAPart:
    """One half of MLA's ``kv_b_proj`` (per head: ``nope`` key rows, then ``v`` value rows,
    each of ``kv_lora_rank`` columns) moving between llama.cpp's and mlx-lm's layouts.

    ``join``: a llama.cpp ``attn_k_b`` (heads x rank x nope) or ``attn_v_b`` (heads x v x rank)
    written into its rows of mlx-lm's whole ``kv_b_proj`` (deepseek_v2); otherwise the file's
    whole ``attn_kv_b`` split into mlx-lm's ``embed_q`` (heads x rank x nope) or ``unembed_out``
    (heads x v x rank) (deepseek_v3)."""

    part: Literal["k", "v"]
    join: bool
    heads: int
    nope: int
    v: int
    rank: int

    def source_shape(self) -> tuple[int, ...]:
        if not self.join:
            return (self.heads * (self.nope + self.v), self.rank)
        if self.part == "k":
            return (self.heads, self.rank, self.nope)
        return (self.heads, self.v, self.rank)


@dataclass(frozen=True)
class TensorPlan:
    source: TensorInfo
    target: str  # MLX parameter name
    unpermute_heads: int | None = None  # undo llama.cpp's Q/K row permutation with this many heads
    add: float = 0.0  # added to the dequantized values in float32 (undoes Gemma's norm shift)
    mla: MLAPart | None = None  # a re-split or re-joined half of MLA's kv_b projection

    def source_shape(self, target_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the GGUF tensor must have for a target of ``target_shape``."""
        return target_shape if self.mla is None else self.mla.source_shape()

    @property
    def row_unit(self) -> int:
        """Source rows that must be read together (whole heads for un-permuting and splits)."""
        if self.unpermute_heads:
            return self.source.outer_rows // self.unpermute_heads
        if self.mla is not None and not self.mla.join:
            return self.mla.nope + self.mla.v
        return 1


def tensor_plan(gguf: GGUFFile, config: dict[str, Any]) -> list[TensorPlan]:
    """Map every GGUF tensor to its MLX name, in file order (sequential reads)."""
    arch = arch_for(gguf)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config["num_key_value_heads"])
    layers = int(config["num_hidden_layers"])
    block = _BLOCK | _BLOCK_OVERRIDES.get(arch.gguf_arch, {})
    mtp = mtp_layers(gguf)
    plans: list[TensorPlan] = []
    for info in sorted(gguf.tensors, key=lambda t: t.offset):
        name = info.name
        if name in _CONFIG_ONLY:
            continue
        target = _GLOBAL.get(name)
        heads = None
        if target is None:
            match = _BLOCK_RE.match(name)
            if match and layers <= int(match.group(1)) < layers + mtp:
                continue  # a multi-token-prediction block: mlx-lm drops it too
            mla = match and match.group(2) in _MLA_TENSORS and arch.gguf_arch == "deepseek2"
            if match and mla and int(match.group(1)) < layers:
                plans += _mla_plans(info, int(match.group(1)), match.group(2), config)
                continue
            if match and int(match.group(1)) < layers and match.group(2) in block:
                suffix = match.group(2)
                target = f"model.layers.{int(match.group(1))}.{block[suffix]}"
                if arch.permuted_qk and suffix.startswith("attn_q."):
                    heads = n_head
                elif arch.permuted_qk and suffix.startswith("attn_k."):
                    heads = n_kv
        if target is None:
            raise NotYetError(
                f"{gguf.path}: tensor {name!r} has no MLX counterpart for {arch.gguf_arch}",
                hint="this GGUF carries weights local-ai does not know how to map; convert the "
                "original safetensors repo if there is one",
            )
        shift = arch.norm_shift if name.endswith("norm.weight") else 0.0
        plans.append(TensorPlan(info, target, heads, -shift))
    return plans


def _mla_plans(
    info: TensorInfo, layer: int, suffix: str, config: dict[str, Any]
) -> list[TensorPlan]:
    """kv_b tensors of one layer, for the layout the mlx-lm model type holds."""
    prefix = f"model.layers.{layer}.self_attn"
    dims = {
        "heads": int(config["num_attention_heads"]),
        "nope": int(config["qk_nope_head_dim"]),
        "v": int(config["v_head_dim"]),
        "rank": int(config["kv_lora_rank"]),
    }
    whole = config["model_type"] == "deepseek_v2"  # one kv_b_proj; deepseek_v3 holds halves
    if suffix == "attn_kv_b.weight":
        if whole:
            return [TensorPlan(info, f"{prefix}.kv_b_proj.weight")]
        return [
            TensorPlan(info, f"{prefix}.embed_q.weight", mla=MLAPart("k", False, **dims)),
            TensorPlan(info, f"{prefix}.unembed_out.weight", mla=MLAPart("v", False, **dims)),
        ]
    part: Literal["k", "v"] = "k" if suffix == "attn_k_b.weight" else "v"
    if whole:
        return [TensorPlan(info, f"{prefix}.kv_b_proj.weight", mla=MLAPart(part, True, **dims))]
    name = "embed_q" if part == "k" else "unembed_out"
    return [TensorPlan(info, f"{prefix}.{name}.weight")]  # llama.cpp's halves are mlx-lm's


def low_bit_types(tensors: Iterable[TensorInfo]) -> dict[str, int]:
    """Bytes per storage type for 2-D+ weights stored below 8 bits (requantizing them compounds
    error)."""
    high = {"F32", "F16", "BF16", "F64", "Q8_0", "Q8_1", "Q8_K", "I8", "I16", "I32", "I64"}
    out: dict[str, int] = {}
    for t in tensors:
        if len(t.dims) >= 2 and t.type.name not in high:
            out[t.type.name] = out.get(t.type.name, 0) + t.nbytes
    return out


def requantize_warning(
    low_bit: Mapping[str, int], base_model: str | None, recipe: Recipe
) -> str | None:
    """The warning for quantizing weights a GGUF already stores below 8 bits."""
    if not low_bit or not recipe.quantized:
        return None
    msg = (
        f"the GGUF's weights are already quantized below 8 bits ({', '.join(sorted(low_bit))}); "
        f"converting them to {recipe.level} compounds the quantization error"
    )
    if base_model:
        msg += f"; for better quality convert the original repo instead: {base_model}"
    return msg


def base_model_repo(gguf: GGUFFile) -> str | None:
    """``org/name`` of the model this GGUF was made from, when its metadata says."""
    for i in range(min(gguf.get_int("general.base_model.count", 0, maximum=64), 64)):
        url = gguf.get_str(f"general.base_model.{i}.repo_url", "")
        match = re.match(r"^https://huggingface\.co/([\w.-]+/[\w.-]+)/?$", url)
        if match:
            return match.group(1)
        org = gguf.get_str(f"general.base_model.{i}.organization", "")
        name = gguf.get_str(f"general.base_model.{i}.name", "")
        if org and name and re.match(r"^[\w.-]+$", org) and re.match(r"^[\w.-]+$", name):
            return f"{org}/{name}"
    return None


def _tensor(gguf: GGUFFile, name: str) -> TensorInfo:
    info = gguf.tensor(name)
    if info is None:
        raise MalformedFileError(gguf.path, f"tensor {name!r}", "required tensor is missing")
    return info


def _bad(gguf: GGUFFile, key: str, problem: str) -> MalformedFileError:
    return MalformedFileError(gguf.path, f"metadata {key!r}", problem)


def _bad_tensor(gguf: GGUFFile, info: TensorInfo, problem: str) -> MalformedFileError:
    return MalformedFileError(gguf.path, f"tensor {info.name!r}", problem)
