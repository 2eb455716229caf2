"""A fake-hub catalogue of real-looking model repos for search and ranking tests.

Names, parameter counts, shapes (layers, KV heads, head dim), context lengths and quantization
layouts follow the real repos (Qwen3-Coder-30B-A3B, Devstral Small 2507, GLM-4.5-Air, GLM-4.6,
DeepSeek-V3.2, MiniMax-M2, Kimi-K2, Qwen3-8B, gpt-oss-20b, Llama 3.1 8B), in the three kinds
local-ai distinguishes: MLX conversions (mlx-community style -4bit/-8bit/-mxfp4 repos), original
safetensors (bf16 or fp8), and GGUF repos with several quantization files (split ones too).
Weight files are ``SizedFile``s: the hub reports real-looking sizes and derives parameter counts
from real safetensors/GGUF headers, without gigabytes in memory. Gated and noise repos included.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from tests.harness.fakehub import FakeHub, FileSource, SizedFile

GIB = 1024**3


@dataclass(frozen=True)
class Arch:
    """What a base model is: the facts sizes and the KV cache follow from."""

    repo: str
    params: int
    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    context: int
    kv_lora_rank: int | None = None  # MLA (DeepSeek V3, Kimi K2)
    rope_dim: int | None = None

    def config(self, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "architectures": [self.model_type.title().replace("_", "") + "ForCausalLM"],
            "model_type": self.model_type,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.context,
            "torch_dtype": "bfloat16",
        }
        if self.kv_lora_rank:
            cfg["kv_lora_rank"] = self.kv_lora_rank
            cfg["qk_rope_head_dim"] = self.rope_dim
        cfg.update(extra)
        return cfg


QWEN3_CODER_30B = Arch(
    "Qwen/Qwen3-Coder-30B-A3B-Instruct", 30_532_122_624, "qwen3_moe", 48, 32, 4, 128, 2048, 262144
)
DEVSTRAL = Arch(
    "mistralai/Devstral-Small-2507", 23_572_403_200, "mistral", 40, 32, 8, 128, 5120, 131072
)
GLM_AIR = Arch("zai-org/GLM-4.5-Air", 110_468_824_832, "glm4_moe", 46, 96, 8, 128, 4096, 131072)
GLM_46 = Arch("zai-org/GLM-4.6", 356_785_898_496, "glm4_moe", 92, 96, 8, 128, 5120, 202752)
DEEPSEEK = Arch(
    "deepseek-ai/DeepSeek-V3.2-Exp",
    685_396_921_088,
    "deepseek_v32",
    61,
    128,
    128,
    128,
    7168,
    163840,
    kv_lora_rank=512,
    rope_dim=64,
)
MINIMAX = Arch("MiniMaxAI/MiniMax-M2", 228_700_000_000, "minimax", 62, 48, 8, 128, 3072, 196608)
KIMI = Arch(
    "moonshotai/Kimi-K2-Instruct",
    1_026_408_232_448,
    "kimi_k2",
    61,
    64,
    64,
    128,
    7168,
    131072,
    kv_lora_rank=512,
    rope_dim=64,
)
QWEN3_8B = Arch("Qwen/Qwen3-8B", 8_190_735_360, "qwen3", 36, 32, 8, 128, 4096, 40960)
GPT_OSS = Arch("openai/gpt-oss-20b", 20_914_757_184, "gpt_oss", 24, 64, 8, 64, 2880, 131072)
LLAMA_8B = Arch(
    "meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, "llama", 32, 32, 8, 128, 4096, 131072
)

# Bytes per parameter of the safetensors dtypes used here.
_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U32": 4, "U8": 1}
# GGUF tensor type ids (ggml_type) for the header's one tensor.
_GGML_TYPE = {
    "Q8_0": 8,
    "Q4_K_M": 12,
    "Q4_K_XL": 12,
    "Q6_K": 14,
    "Q2_K": 10,
    "Q5_K_M": 13,
    "Q3_K_M": 11,
    "BF16": 30,
    "F16": 1,
    "IQ4_XS": 23,
}
GGUF_BITS = {
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q4_K_M": 4.85,
    "Q4_K_XL": 4.9,
    "Q3_K_M": 3.91,
    "Q2_K": 2.96,
    "IQ4_XS": 4.25,
    "BF16": 16.0,
    "F16": 16.0,
}


def safetensors_file(tensors: dict[str, tuple[str, int]]) -> SizedFile:
    """A safetensors file with a real header: ``{name: (dtype, element count)}``."""
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, count) in tensors.items():
        nbytes = count * _DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": [count], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    head = struct.pack("<Q", len(raw)) + raw
    return SizedFile(len(head) + offset, head)


def _gguf_str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf_file(arch: Arch, quant: str, params: int, size: int) -> SizedFile:
    """A GGUF v3 file whose header names the architecture, context length and one tensor of
    ``params`` elements (the hub's ``gguf.total``); ``size`` bytes in all."""
    kv = [
        ("general.architecture", 8, _gguf_str(arch.model_type)),
        ("general.name", 8, _gguf_str(arch.repo.split("/")[-1])),
        (f"{arch.model_type}.context_length", 4, struct.pack("<I", arch.context)),
        (f"{arch.model_type}.block_count", 4, struct.pack("<I", arch.layers)),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for key, vtype, value in kv:
        head += _gguf_str(key) + struct.pack("<I", vtype) + value
    head += _gguf_str("token_embd.weight") + struct.pack("<I", 1) + struct.pack("<Q", params)
    head += struct.pack("<IQ", _GGML_TYPE.get(quant, 12), 0)
    return SizedFile(max(size, len(head)), head)


def _tokenizer_files() -> dict[str, FileSource]:
    return {
        "tokenizer.json": json.dumps({"model": {"type": "BPE"}}),
        "tokenizer_config.json": json.dumps({"eos_token": "<|im_end|>"}),
        "README.md": "# model card\n",
    }


def _shards(tensors_total: dict[str, int], shards: int) -> dict[str, FileSource]:
    out: dict[str, FileSource] = {}
    for i in range(shards):
        part = {f"t{i}.{d}": (d, n // shards) for d, n in tensors_total.items()}
        name = (
            "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        )
        out[name] = safetensors_file(part)
    return out


@dataclass(frozen=True)
class Listing:
    """Popularity and dates as the hub reports them."""

    downloads: int
    likes: int
    modified: str  # ISO date

    def metadata(self, **extra: Any) -> dict[str, Any]:
        return {
            "downloads": self.downloads,
            "likes": self.likes,
            "lastModified": f"{self.modified}T12:00:00.000Z",
            "pipeline_tag": "text-generation",
            **extra,
        }


def add_original(
    hub: FakeHub,
    arch: Arch,
    listing: Listing,
    *,
    dtype: str = "BF16",
    shards: int = 4,
    gated: bool = False,
    base: str | None = None,
    quantization_config: dict[str, Any] | None = None,
    tensors: dict[str, int] | None = None,
) -> str:
    extra: dict[str, Any] = {}
    if quantization_config:
        extra["quantization_config"] = quantization_config
    files = {
        "config.json": json.dumps(arch.config(**extra)),
        **_tokenizer_files(),
        **_shards(tensors or {dtype: arch.params}, shards),
    }
    card = {"cardData": {"base_model": base}} if base else {}
    return hub.add_repo(
        arch.repo,
        files,
        gated="manual" if gated else False,
        metadata=listing.metadata(library_name="transformers", **card),
    )


def add_mlx(
    hub: FakeHub,
    repo: str,
    arch: Arch,
    listing: Listing,
    *,
    bits: int | None = 4,
    mode: str = "affine",
    group_size: int = 64,
    shards: int = 2,
) -> str:
    """An mlx-lm conversion: packed U32 weights plus BF16 scales and biases (affine), U8 scales
    (mxfp4), or plain BF16 (``bits=None``)."""
    p = arch.params
    config = arch.config()
    if bits is None:
        tensors = {"BF16": p}
    else:
        quant = {"group_size": group_size, "bits": bits, "mode": mode}
        config["quantization"] = quant
        config["quantization_config"] = quant
        packed = p * bits // 32
        tensors = (
            {"U32": packed, "U8": p // group_size}
            if mode == "mxfp4"
            else {"U32": packed, "BF16": 2 * p // group_size}
        )
    files = {"config.json": json.dumps(config), **_tokenizer_files(), **_shards(tensors, shards)}
    return hub.add_repo(
        repo,
        files,
        metadata=listing.metadata(
            library_name="mlx", tags=["mlx", "safetensors"], cardData={"base_model": arch.repo}
        ),
    )


def add_gguf(
    hub: FakeHub,
    repo: str,
    arch: Arch,
    listing: Listing,
    quants: tuple[str, ...],
    *,
    split: tuple[str, ...] = (),
    prefix: str | None = None,
) -> str:
    """A GGUF repo with one file per quantization (``split`` ones in two parts, in a folder, as
    unsloth and bartowski publish big models); an mmproj file is left out."""
    stem = prefix or arch.repo.split("/")[-1]
    files: dict[str, FileSource] = {"README.md": "# GGUF\n"}
    for q in quants:
        size = int(arch.params * GGUF_BITS[q.removeprefix("UD-")] / 8)
        if q in split:
            for i in (1, 2):
                name = f"{q}/{stem}-{q}-{i:05d}-of-00002.gguf"
                files[name] = gguf_file(arch, q, arch.params, size // 2)
        else:
            files[f"{stem}-{q}.gguf"] = gguf_file(arch, q, arch.params, size)
    return hub.add_repo(
        repo,
        files,
        metadata=listing.metadata(tags=["gguf"], cardData={"base_model": arch.repo}),
    )


def add_catalogue(hub: FakeHub) -> list[str]:
    """Add every catalogue repo to ``hub``; returns their ids (at least 30)."""
    L = Listing
    repos: list[str] = []

    def note(repo: str) -> None:
        repos.append(repo)

    # Qwen3-Coder-30B-A3B: original, four MLX conversions, two GGUF publishers.
    add_original(hub, QWEN3_CODER_30B, L(420_000, 780, "2025-08-01"), shards=16)
    note(QWEN3_CODER_30B.repo)
    for repo, bits, listing in (
        ("mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit", 4, L(95_000, 120, "2025-08-02")),
        ("mlx-community/Qwen3-Coder-30B-A3B-Instruct-6bit", 6, L(21_000, 30, "2025-08-02")),
        ("mlx-community/Qwen3-Coder-30B-A3B-Instruct-8bit", 8, L(40_000, 45, "2025-08-02")),
        (
            "lmstudio-community/Qwen3-Coder-30B-A3B-Instruct-MLX-4bit",
            4,
            L(60_000, 25, "2025-08-03"),
        ),
    ):
        add_mlx(hub, repo, QWEN3_CODER_30B, listing, bits=bits)
        note(repo)
    add_gguf(
        hub,
        "unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF",
        QWEN3_CODER_30B,
        L(310_000, 600, "2025-09-10"),
        ("Q2_K", "UD-Q4_K_XL", "Q4_K_M", "Q8_0", "BF16"),
        split=("BF16",),
    )
    note("unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF")
    add_gguf(
        hub,
        "bartowski/Qwen_Qwen3-Coder-30B-A3B-Instruct-GGUF",
        QWEN3_CODER_30B,
        L(88_000, 70, "2025-08-05"),
        ("Q4_K_M", "Q6_K"),
        prefix="Qwen_Qwen3-Coder-30B-A3B-Instruct",
    )
    note("bartowski/Qwen_Qwen3-Coder-30B-A3B-Instruct-GGUF")

    # Devstral Small 2507 (24B; the name has no size).
    add_original(hub, DEVSTRAL, L(150_000, 350, "2025-07-10"), shards=10)
    note(DEVSTRAL.repo)
    for repo, bits, listing in (
        ("mlx-community/Devstral-Small-2507-4bit", 4, L(12_000, 20, "2025-07-11")),
        ("mlx-community/Devstral-Small-2507-8bit", 8, L(5_000, 8, "2025-07-11")),
    ):
        add_mlx(hub, repo, DEVSTRAL, listing, bits=bits)
        note(repo)
    add_gguf(
        hub,
        "bartowski/mistralai_Devstral-Small-2507-GGUF",
        DEVSTRAL,
        L(70_000, 60, "2025-07-12"),
        ("Q4_K_M", "Q6_K", "Q8_0"),
        prefix="mistralai_Devstral-Small-2507",
    )
    note("bartowski/mistralai_Devstral-Small-2507-GGUF")

    # GLM-4.5-Air (106B MoE) and GLM-4.6 (355B).
    add_original(hub, GLM_AIR, L(250_000, 500, "2025-07-28"), shards=8)
    note(GLM_AIR.repo)
    for repo, bits, listing in (
        ("mlx-community/GLM-4.5-Air-4bit", 4, L(30_000, 60, "2025-07-29")),
        ("mlx-community/GLM-4.5-Air-3bit", 3, L(18_000, 40, "2025-07-30")),
    ):
        add_mlx(hub, repo, GLM_AIR, listing, bits=bits)
        note(repo)
    add_gguf(
        hub,
        "unsloth/GLM-4.5-Air-GGUF",
        GLM_AIR,
        L(90_000, 150, "2025-08-10"),
        ("Q2_K", "Q4_K_M"),
        split=("Q4_K_M",),
    )
    note("unsloth/GLM-4.5-Air-GGUF")
    add_original(hub, GLM_46, L(120_000, 900, "2025-09-30"), shards=8)
    note(GLM_46.repo)
    add_mlx(hub, "mlx-community/GLM-4.6-4bit", GLM_46, L(9_000, 40, "2025-10-01"), bits=4)
    note("mlx-community/GLM-4.6-4bit")

    # fp8 originals: DeepSeek V3.2, MiniMax-M2, Kimi K2.
    fp8 = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    for arch, listing, mlx_repo, mlx_listing in (
        (
            DEEPSEEK,
            L(80_000, 700, "2025-09-29"),
            "mlx-community/DeepSeek-V3.2-Exp-4bit",
            L(2_000, 15, "2025-10-02"),
        ),
        (
            MINIMAX,
            L(200_000, 1200, "2025-10-27"),
            "mlx-community/MiniMax-M2-4bit",
            L(15_000, 50, "2025-10-28"),
        ),
        (
            KIMI,
            L(60_000, 2000, "2025-07-11"),
            "mlx-community/Kimi-K2-Instruct-4bit",
            L(3_000, 30, "2025-07-14"),
        ),
    ):
        add_original(hub, arch, listing, dtype="F8_E4M3", shards=8, quantization_config=fp8)
        note(arch.repo)
        add_mlx(hub, mlx_repo, arch, mlx_listing, bits=4, shards=4)
        note(mlx_repo)
    add_mlx(hub, "mlx-community/MiniMax-M2-3bit", MINIMAX, L(6_000, 20, "2025-10-29"), bits=3)
    note("mlx-community/MiniMax-M2-3bit")

    # Qwen3-8B: an 8B general model in every packaging.
    add_original(hub, QWEN3_8B, L(900_000, 650, "2025-05-21"), shards=5, base="Qwen/Qwen3-8B-Base")
    note(QWEN3_8B.repo)
    for repo, bits, listing in (
        ("mlx-community/Qwen3-8B-4bit", 4, L(45_000, 30, "2025-04-29")),
        ("mlx-community/Qwen3-8B-8bit", 8, L(20_000, 12, "2025-04-29")),
        ("mlx-community/Qwen3-8B-bf16", None, L(4_000, 5, "2025-04-29")),
        ("mlx-community/Qwen3-8B-4bit-DWQ", 4, L(9_000, 14, "2025-05-20")),
    ):
        add_mlx(hub, repo, QWEN3_8B, listing, bits=bits, shards=1)
        note(repo)
    add_gguf(
        hub,
        "Qwen/Qwen3-8B-GGUF",
        QWEN3_8B,
        L(200_000, 150, "2025-05-01"),
        ("Q4_K_M", "Q8_0"),
        prefix="Qwen3-8B",
    )
    note("Qwen/Qwen3-8B-GGUF")

    # gpt-oss-20b: published in mxfp4; an MLX mxfp4 conversion.
    add_original(
        hub,
        GPT_OSS,
        L(5_000_000, 3500, "2025-08-05"),
        shards=3,
        quantization_config={"quant_method": "mxfp4"},
        tensors={"U8": GPT_OSS.params * 17 // 32, "BF16": GPT_OSS.params // 20},
    )
    note(GPT_OSS.repo)
    add_mlx(
        hub,
        "mlx-community/gpt-oss-20b-MXFP4",
        GPT_OSS,
        L(70_000, 80, "2025-08-06"),
        bits=4,
        mode="mxfp4",
        group_size=32,
        shards=1,
    )
    note("mlx-community/gpt-oss-20b-MXFP4")

    # Gated original (config.json unreadable without accepting terms) and its MLX conversion.
    add_original(hub, LLAMA_8B, L(6_000_000, 4800, "2024-09-25"), shards=4, gated=True)
    note(LLAMA_8B.repo)
    add_mlx(
        hub,
        "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit",
        LLAMA_8B,
        L(150_000, 90, "2024-07-23"),
        bits=4,
        shards=1,
    )
    note("mlx-community/Meta-Llama-3.1-8B-Instruct-4bit")

    # Noise: a LoRA adapter and a repo without weights match "qwen3" but offer nothing to serve.
    hub.add_repo(
        "someone/qwen3-coder-30b-lora",
        {
            "adapter_config.json": "{}",
            "adapters.safetensors": safetensors_file({"lora": ("BF16", 1000)}),
        },
        metadata=Listing(50, 0, "2025-08-20").metadata(),
    )
    note("someone/qwen3-coder-30b-lora")
    hub.add_repo(
        "someone/qwen3-notes",
        {"README.md": "notes\n"},
        metadata=Listing(10, 0, "2025-01-01").metadata(),
    )
    note("someone/qwen3-notes")
    return repos
