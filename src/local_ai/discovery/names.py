"""What repo and file names say: query tokens, parameter sizes, quantization labels, GGUF file
sets and the base-model stem variants are grouped by. Pure string work, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from local_ai import sizing

_SPLIT_RE = re.compile(r"[\s/_\-]+")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([bmt])$")
_SIZE_UNITS = {"m": 1e6, "b": 1e9, "t": 1e12}
# A parameter count in a query matches a model within this ratio (names round: 23.6B is "24B").
SIZE_TOLERANCE = 1.25

# GGUF quantization types as they appear in file names (llama.cpp names, unsloth's "UD-" prefix).
_GGUF_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q\d(?:_[0-9A-Z]+)*|TQ\d_\d|BF16|F16|F32|MXFP4(?:_MOE)?))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
DTYPE_BITS: Mapping[str, float] = {
    "F64": 64.0,
    "F32": 32.0,
    "BF16": 16.0,
    "F16": 16.0,
    "F8_E4M3": 8.0,
    "F8_E5M2": 8.0,
    "I8": 8.0,
    "U8": 8.0,
}
_BITS_RE = re.compile(r"(?<![0-9])([2-8])[-_]?bits?(?![a-z0-9])")
_MIXED_RE = re.compile(r"mixed[-_]?([2-8])[-_]([2-8])(?:[-_]?bits?)?")
_SPLIT_PART_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Name parts that describe a packaging of weights, not the model: stripped to find the stem.
_PACKAGING_TOKENS = frozenset(
    {
        "gguf",
        "mlx",
        "bf16",
        "fp16",
        "f16",
        "fp32",
        "fp8",
        "int4",
        "int8",
        "mxfp4",
        "nvfp4",
        "mxfp8",
        "dwq",
        "awq",
        "gptq",
        "exl2",
        "quantized",
        "q4",
        "q8",
        "ud",
        "mixed",
    }
)
_BIT_TOKEN_RE = re.compile(r"^([2-8]bits?|q\d(_k)?(_[a-z0-9]+)?|i?q\d_[a-z0-9_]+|tq\d_\d)$")


def tokens(text: str) -> list[str]:
    """Lower-case words of a name or query: 'Qwen3-Coder-30B A3B' -> ['qwen3', 'coder', '30b',
    'a3b']. Dots stay inside words ('glm-4.5-air' -> ['glm', '4.5', 'air'])."""
    return [t for t in _SPLIT_RE.split(text.lower()) if t]


def parse_size(token: str) -> float | None:
    """'30b' -> 30e9, '500m' -> 5e8, '1t' -> 1e12; None for anything else."""
    match = _SIZE_RE.match(token.lower())
    if not match:
        return None
    return float(match.group(1)) * _SIZE_UNITS[match.group(2)]


def hub_terms(query: str) -> list[str]:
    """Search strings for the hub, most specific first: the whole query, then without parameter
    sizes (names often omit them: Devstral 24B is 'Devstral-Small-2507'), then its first word."""
    words = tokens(query)
    if not words:
        return []
    named = [w for w in words if parse_size(w) is None]
    terms = ["-".join(words), "-".join(named), named[0] if named else words[0]]
    out: list[str] = []
    for term in terms:
        if term and term not in out:
            out.append(term)
    return out


def size_matches(size: float, params: int | None) -> bool:
    if params is None or params <= 0:
        return False
    return 1 / SIZE_TOLERANCE <= params / size <= SIZE_TOLERANCE


def name_matches(query: str, names: Iterable[str], params: int | None = None) -> bool:
    """Does every word of `query` appear in one of `names` (repo ids, base model ids)?

    A parameter size ('24b') also matches a model of about that size; other words match whole
    words of a name, or (4+ characters) any part of it with separators removed ('llama3.1').
    """
    words_by_name = [set(tokens(n.split("/")[-1])) | set(tokens(n)) for n in names]
    compact = [re.sub(r"[\s/_\-]+", "", n.lower()) for n in names]
    for word in tokens(query):
        if any(word in words for words in words_by_name):
            continue
        size = parse_size(word)
        if size is not None:
            if size_matches(size, params):
                continue
            return False
        if len(word) >= 4 and any(word.replace("-", "") in c for c in compact):
            continue
        return False
    return True


# ---- quantization labels ----------------------------------------------------------------


@dataclass(frozen=True)
class QuantLabel:
    """A quantization as read from a name or config: a label people know and bits per weight
    (scales included) for quality comparisons and size estimates."""

    label: str  # "4bit", "mxfp4", "Q4_K_M", "bf16", "fp8"
    bits: float
    group_size: int | None = None
    source: str = "name"  # "config", "metadata", "name"


def gguf_quant(file_name: str) -> QuantLabel | None:
    """The quantization type in a GGUF file name ('...-UD-Q4_K_XL.gguf' -> Q4_K_XL) or its
    folder ('Q4_K_M/model-00001-of-00002.gguf')."""
    matches = _GGUF_QUANT_RE.findall(file_name)
    if not matches:
        return None
    raw = matches[-1].upper()
    bits = sizing.gguf_bits(raw)
    if bits is None:
        digit = re.search(r"Q(\d)", raw)
        if digit is None:
            return None
        bits = int(digit.group(1)) + 0.5
    return QuantLabel(raw, bits)


def name_quant(repo_name: str) -> QuantLabel | None:
    """The quantization an MLX (or other safetensors) repo name announces: '-4bit', '-8bit',
    '-mxfp4', '-bf16', '-fp8', 'mixed-3-6'. MLX affine levels default to group size 64."""
    lowered = repo_name.lower().split("/")[-1]
    mixed = _MIXED_RE.search(lowered)
    if mixed:
        label = f"mixed_{mixed.group(1)}_{mixed.group(2)}"
        bits = sizing.MIXED_BITS.get(label, (int(mixed.group(1)) + int(mixed.group(2))) / 2 + 0.5)
        return QuantLabel(label, bits)
    for mode, bits in sizing.MODE_BITS.items():
        if mode in lowered:
            return QuantLabel(mode, bits)
    found = _BITS_RE.search(lowered)
    if found:
        n = int(found.group(1))
        return QuantLabel(f"{n}bit", sizing.affine_bits(n), sizing.DEFAULT_GROUP_SIZE)
    words = set(tokens(lowered))
    if "bf16" in words:
        return QuantLabel("bf16", 16.0)
    if "fp16" in words or "f16" in words:
        return QuantLabel("fp16", 16.0)
    if "fp8" in words:
        return QuantLabel("fp8", 8.0)
    return None


def config_quant(config: Mapping[str, Any]) -> QuantLabel | None:
    """Quantization from config.json: MLX's "quantization" block (bits, group_size, mode), or a
    transformers "quantization_config" (fp8, mxfp4, bits), or the unquantized dtype."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "quantization" not in config:
        inner = config_quant(text)
        if inner is not None:
            return inner
    mlx = config.get("quantization")
    if isinstance(mlx, Mapping):
        return _mlx_quant(mlx)
    hf = config.get("quantization_config")
    if isinstance(hf, Mapping):
        method = str(hf.get("quant_method") or hf.get("mode") or "").lower()
        if method in sizing.MODE_BITS:
            return QuantLabel(method, sizing.MODE_BITS[method], source="config")
        if method == "fp8":
            return QuantLabel("fp8", 8.0, source="config")
        bits = hf.get("bits")
        if isinstance(bits, int) and not isinstance(bits, bool):
            if "group_size" in hf and "quant_method" not in hf:
                return _mlx_quant(hf)  # mlx-lm writes its block under both keys
            group = hf.get("group_size")
            gs = group if isinstance(group, int) and group > 0 else 128
            return QuantLabel(f"int{bits}", sizing.affine_bits(bits, gs), gs, source="config")
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "").lower()
    if dtype in ("bfloat16", "float16", "float32"):
        label = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype]
        return QuantLabel(label, 32.0 if label == "fp32" else 16.0, source="config")
    return None


def _mlx_quant(block: Mapping[str, Any]) -> QuantLabel | None:
    mode = str(block.get("mode") or "affine").lower()
    bits = block.get("bits")
    group = block.get("group_size")
    gs = group if isinstance(group, int) and group > 0 else sizing.DEFAULT_GROUP_SIZE
    if mode in sizing.MODE_BITS:
        return QuantLabel(mode, sizing.MODE_BITS[mode], gs, source="config")
    if not isinstance(bits, int) or isinstance(bits, bool) or bits <= 0:
        return None
    # Per-layer overrides (mlx-lm mixed recipes) are nested blocks with their own bits.
    layer_bits: set[int] = {
        v["bits"]
        for v in block.values()
        if isinstance(v, Mapping) and isinstance(v.get("bits"), int)
    }
    if layer_bits - {bits}:
        low, high = min(layer_bits | {bits}), max(layer_bits | {bits})
        label = f"mixed_{low}_{high}"
        mixed_bits = sizing.MIXED_BITS.get(label, sizing.affine_bits(bits, gs) + 0.5)
        return QuantLabel(label, mixed_bits, gs, "config")
    return QuantLabel(f"{bits}bit", sizing.affine_bits(bits, gs), gs, source="config")


def dtype_bits(parameters: Mapping[str, int]) -> float | None:
    """Bits per weight of unpacked safetensors from the hub's parameter counts per dtype; None
    when weights are packed into integers (MLX or GPTQ quantization: the counts are not weights)."""
    total = sum(parameters.values())
    if total <= 0:
        return None
    packed = sum(n for d, n in parameters.items() if d in ("U32", "I32", "U16"))
    if packed:
        return None
    bits = sum(DTYPE_BITS.get(d, 16.0) * n for d, n in parameters.items())
    return bits / total


# ---- GGUF file sets -------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufSet:
    """One quantization of a GGUF repo: a single file or the parts of a split file."""

    quant: QuantLabel
    files: tuple[str, ...]  # sorted; the first part is what `file =` names

    @property
    def first(self) -> str:
        return self.files[0]


def gguf_sets(names: Sequence[str]) -> list[GgufSet]:
    """GGUF weight files grouped into one set per quantization (split parts together).
    Vision projectors (mmproj) and files without a recognizable quantization are left out."""
    by_key: dict[tuple[str, str], list[str]] = {}
    quants: dict[tuple[str, str], QuantLabel] = {}
    for name in names:
        if not name.lower().endswith(".gguf") or "mmproj" in name.lower():
            continue
        quant = gguf_quant(name)
        if quant is None:
            continue
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        split = _SPLIT_PART_RE.search(name)
        stem = name[: split.start()] if split else name
        key = (folder, stem if not split else stem + "#split")
        by_key.setdefault(key, []).append(name)
        quants[key] = quant
    return [
        GgufSet(quants[key], tuple(sorted(files)))
        for key, files in sorted(by_key.items(), key=lambda kv: -quants[kv[0]].bits)
    ]


# ---- stems and display names ----------------------------------------------------------------


def stem(repo_or_name: str) -> str:
    """The model a name stands for, without org and packaging suffixes: 'mlx-community/Qwen3-8B-
    4bit-DWQ' -> 'qwen3-8b'; 'bartowski/mistralai_Devstral-Small-2507-GGUF' -> 'devstral-small-
    2507'. Variants with the same stem are grouped when the hub names no base model."""
    org, _, name = repo_or_name.rpartition("/")
    name = name.lower()
    if org and name.startswith(org.lower() + "_"):
        name = name[len(org) + 1 :]
    elif "_" in name.split("-")[0]:  # bartowski style: 'mistralai_Devstral-...'
        name = name.split("_", 1)[1]
    name = _MIXED_RE.sub("", name).strip("-")
    words = [w for w in name.split("-") if w]
    while len(words) > 1 and (
        words[-1] in _PACKAGING_TOKENS or _BIT_TOKEN_RE.match(words[-1]) or gguf_quant(words[-1])
    ):
        words.pop()
    return "-".join(words)


def display_name(base: str, quant: str | None = None) -> str:
    """'Qwen/Qwen3-Coder-30B-A3B-Instruct' + '4bit' -> 'Qwen3 Coder 30B A3B Instruct (4bit)'."""
    name = base.rsplit("/", 1)[-1].replace("_", " ").replace("-", " ")
    return f"{name} ({quant})" if quant else name


def format_params(params: int | None) -> str:
    if not params:
        return "?"
    if params >= 1e12:
        return f"{params / 1e12:.2f}T"
    if params >= 1e9:
        value = params / 1e9
        return f"{value:.0f}B" if value >= 100 else f"{value:.1f}B"
    return f"{params / 1e6:.0f}M"
