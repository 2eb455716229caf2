"""Shared pieces of the conversion tests: tiny models whose rows split into K-quant blocks, an
independent "dequantized reference" built from gguf-py's reader, and next-token logits in fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.harness import gguf_export as ge
from tests.harness import tinymodels as tm

# Every 2-D row is a multiple of 256, so K-quants are really used (no llama-quantize fallback).
WIDE: dict[str, Any] = {
    "hidden_size": 256,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 512,
    "moe_intermediate_size": 256,
}
PROMPTS = (
    "def fibonacci(n: int) -> list[int]:\n    values = [0, 1]",
    "<|im_start|>user\nHow do I reverse a list in Python? 12345<|im_end|>\n",
)
TEXT = (
    "Hello world! 12345 <|im_start|>user\nÇa va? def f(x): return x**2 <think>hmm</think> "
    '<tool_call>{"a": 1}</tool_call><|im_end|>  spaces   \n\n tabs\t'
)
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi 42"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Reverse a list in Python."},
]


@pytest.fixture(scope="session")
def wide_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("convert-wide")
    return {arch: tm.build_model(root / arch, arch, seed=1, **WIDE) for arch in tm.ARCHITECTURES}


def prompt_ids(model_dir: Path) -> list[list[int]]:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    return [tok.encode(p) for p in PROMPTS]


def load_model(model_dir: Path) -> Any:
    """The model alone (mlx-lm's loader without the tokenizer, which is slow to load)."""
    from mlx_lm.utils import load_model as mlx_load_model

    return mlx_load_model(Path(model_dir))[0]


def logits(model_dir: Path | Any, prompts: list[list[int]]) -> np.ndarray:
    """Next-token logits at every position of every prompt, computed in float32 (MLX's CPU
    gather_mm, used by MoE layers, only runs in float32). Takes a directory or a loaded model."""
    import mlx.core as mx

    model = load_model(model_dir) if isinstance(model_dir, Path) else model_dir
    model.set_dtype(mx.float32)
    out = [np.array(model(mx.array([ids]))[0].astype(mx.float32)) for ids in prompts]
    return np.concatenate(out)


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    diff = np.abs(got - want)
    return {
        "max_abs": float(diff.max()),
        "rel_rms": float(np.sqrt((diff**2).mean() / (want**2).mean())),
        "top1": float((got.argmax(-1) == want.argmax(-1)).mean()),
    }


def dequantized_reference(
    model_dir: Path, gguf_path: Path, out: Path, dtype: tm.DType = "float16"
) -> Path:
    """``model_dir`` with its weights replaced by the GGUF's values as gguf-py dequantizes them,
    mapped back to HF names by the harness (Q/K un-permuted, experts unstacked, MLA's split
    kv_b joined) and stored in ``dtype``: what a correct converter must reproduce, independent
    of local_ai.convert's maps."""
    config = json.loads((model_dir / "config.json").read_text())
    stored = ge.read_tensors(gguf_path)
    original, _ = tm.load_safetensors(model_dir / "model.safetensors")
    permuted = ge.gguf_arch_for(config) in ge.PERMUTED_ARCHS
    heads = {
        "self_attn.q_proj.": int(config["num_attention_heads"]),
        "self_attn.k_proj.": int(config["num_key_value_heads"]),
    }
    weights: dict[str, np.ndarray] = {}
    for name in original:
        layer = ge._LAYER_RE.match(name)
        expert = layer and ge._EXPERT_RE.match(layer.group(2))
        if expert and layer:
            stacked = stored[f"blk.{layer.group(1)}.ffn_{expert.group(2)}_exps.weight"][1]
            weights[name] = stacked[int(expert.group(1))]
            continue
        if (
            layer
            and layer.group(2) == "self_attn.kv_b_proj.weight"
            and f"blk.{layer.group(1)}.attn_kv_b.weight" not in stored
        ):
            k_b, v_b = (stored[f"blk.{layer.group(1)}.attn_{x}_b.weight"][1] for x in "kv")
            weights[name] = ge.join_kv_b(k_b, v_b)
            continue
        value = stored[ge.gguf_name(name, config["model_type"])][1]
        shift = ge.norm_shift(config["model_type"], name)
        if shift:
            value = value - np.float32(shift)
        for prefix, n in heads.items():
            if permuted and layer and layer.group(2).startswith(prefix):
                value = ge.unpermute_qk(value, n)
        weights[name] = value
    shutil.copytree(model_dir, out)
    tm.save_safetensors(out / "model.safetensors", weights, dtype)
    config["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def model_parameters(model_dir: Path | Any) -> dict[str, Any]:
    """The parameters mlx-lm's loader gives the model (after its own sanitize: experts stacked,
    tied heads dropped). Takes a directory or a loaded model."""
    from mlx.utils import tree_flatten

    model = load_model(model_dir) if isinstance(model_dir, Path) else model_dir
    return dict(tree_flatten(model.parameters()))


def assert_same_parameters(got: dict[str, Any], want: dict[str, Any]) -> None:
    import mlx.core as mx

    assert sorted(got) == sorted(want)
    for name, x in got.items():
        y = want[name]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert mx.array_equal(x, y).item(), name


def load_weights(model_dir: Path) -> dict[str, Any]:
    import mlx.core as mx

    out: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("model*.safetensors")):
        out |= mx.load(str(shard))
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    """Both directories hold the same tensors, bit for bit (names, dtypes, shapes, values)."""
    import mlx.core as mx

    wa, wb = load_weights(a), load_weights(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        x, y = wa[name], wb[name]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert mx.array_equal(x, y).item(), name
