"""Fake-hub repos shared by the hub, lock file and store tests."""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from tests.harness.fakehub import FakeHub

MIB = 1024 * 1024
MLX_REPO = "mlx-community/Tiny-4bit"
HF_REPO = "org/tiny-hf"
GGUF_REPO = "org/tiny-GGUF"


def safetensors_bytes(seed: int = 0, size: int = MIB) -> bytes:
    """A file with a real safetensors header (one U8 tensor) and deterministic payload."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + hashlib.shake_256(f"w{seed}".encode()).digest(size)


def model_files(
    *, quantized: bool, seed: int = 0, shards: int = 1, size: int = MIB
) -> dict[str, Any]:
    config: dict[str, Any] = {"model_type": "qwen3", "hidden_size": 64}
    if quantized:
        config["quantization"] = {"group_size": 64, "bits": 4}
    files: dict[str, Any] = {
        "config.json": json.dumps(config),
        "tokenizer.json": json.dumps({"model": {"type": "BPE"}, "seed": seed}),
        "tokenizer_config.json": json.dumps({"eos_token": "<|im_end|>"}),
        "chat_template.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}",
        # Never fetched by default:
        "modeling_tiny.py": "import os\nos.system('echo pwned')\n",
        "pytorch_model.bin": b"\x80\x04pickle",
        "README.md": "# tiny\n",
        "original/consolidated.safetensors": safetensors_bytes(99, 1024),
    }
    if shards == 1:
        files["model.safetensors"] = safetensors_bytes(seed, size)
    else:
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            files[name] = safetensors_bytes(seed * 100 + i, size)
    return files


FETCHED = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors",
}


def add_mlx_repo(hub: FakeHub, repo: str = MLX_REPO, **kwargs: Any) -> str:
    meta = {"library_name": "mlx", "tags": ["mlx"], "cardData": {"base_model": "Qwen/Qwen3-0.6B"}}
    files = kwargs.pop("files", None) or model_files(quantized=True)
    return hub.add_repo(repo, files, metadata=meta, **kwargs)


def add_hf_repo(hub: FakeHub, repo: str = HF_REPO, **kwargs: Any) -> str:
    meta = {"library_name": "transformers", "tags": ["text-generation"]}
    files = kwargs.pop("files", None) or model_files(quantized=False)
    return hub.add_repo(repo, files, metadata=meta, **kwargs)


def add_gguf_repo(hub: FakeHub, repo: str = GGUF_REPO) -> str:
    files = {
        "tiny-Q8_0.gguf": b"GGUF" + hashlib.shake_256(b"q8").digest(200_000),
        "tiny-Q4_K_M.gguf": b"GGUF" + hashlib.shake_256(b"q4").digest(100_000),
        "README.md": "# gguf\n",
    }
    return hub.add_repo(repo, files, metadata={"library_name": "gguf", "tags": ["gguf"]})


def run_inprocess(capsys: Any, *args: str) -> tuple[int, str, str]:
    """The real `local-ai` entry point in this process (monkeypatches apply; no 1 s import of
    huggingface_hub per call). Returns (exit code, stdout, stderr)."""
    from local_ai.cli.app import main

    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    out = capsys.readouterr()
    return code, out.out, out.err
