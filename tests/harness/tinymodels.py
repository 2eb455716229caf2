"""Random-weight models in HuggingFace layout, small enough to build in milliseconds.

Every test and benchmark that needs a "real" model directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json) uses this module instead of
downloading weights. The models load with ``mlx_lm.load`` and generate (gibberish) with
``mlx_lm.generate``; their files follow the HF conventions that converters and servers read.

Determinism: the tokenizer is trained offline on the corpus embedded below, and every tensor is
drawn from a generator seeded by ``(seed, crc32(tensor name))``, so a given ``(arch, seed, shape
params)`` always produces byte-identical files, and changing e.g. the layer count leaves layer 0
unchanged.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

DType = Literal["float32", "float16", "bfloat16"]
DTYPES: tuple[DType, ...] = ("float32", "float16", "bfloat16")

ARCHITECTURES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma3_text",
    "glm4_moe",
    "deepseek_v3",
)
#: Built on request only (one conversion test): DeepSeek-V2-Lite-style softmax MoE, no q LoRA.
EXTRA_ARCHITECTURES: tuple[str, ...] = ("deepseek_v2",)
#: Multi-head latent attention (DeepSeek): q/kv LoRA projections instead of q/k/v_proj.
MLA_ARCHS: frozenset[str] = frozenset({"deepseek_v2", "deepseek_v3"})
#: Archs whose RMSNorm scales by ``1 + weight`` (HF stores the offset; norms are drawn around 0).
OFFSET_NORM_ARCHS: frozenset[str] = frozenset({"gemma3_text"})
#: Gemma 3's interleaving: every 6th layer global, the rest sliding-window (llama.cpp fixes 6).
GEMMA3_SLIDING_WINDOW_PATTERN = 6

#: Size of the trained tokenizer, special tokens included.
TOKENIZER_VOCAB_SIZE = 1024

# Added tokens are appended after the trained BPE vocabulary (as in Qwen/Llama-3 tokenizers).
# ``special`` mirrors the HF flag: True for control tokens, False for tokens such as <think> that
# are matched whole but decoded as text.
_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|begin_of_text|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<tool_call>", False),
    ("</tool_call>", False),
)
# Archs without reasoning get reserved control tokens in the <think> slots, so the ids stay stable
# and mlx-lm does not switch on its reasoning parser for them.
_RESERVED_THINK = ("<|reserved_0|>", "<|reserved_1|>")
# Gemma 3 gets its turn markers there instead (<end_of_turn> also ends generation, id 106 in the
# real vocabulary; the tiny template stays ChatML like the other archs').
_TURN_SLOTS: dict[str, tuple[str, str]] = {"gemma3_text": ("<start_of_turn>", "<end_of_turn>")}
SPECIAL_TOKENS: tuple[str, ...] = tuple(tok for tok, _ in _ADDED_TOKENS)

# Pre-tokenizer regexes: Qwen2's splits digits one by one, Llama-3's groups up to three.
# gguf_export maps them back to llama.cpp's ``tokenizer.ggml.pre`` names.
PRETOKENIZER_REGEX: dict[str, str] = {
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
#: Pre-tokenizers made of several Splits in turn, as DeepSeek-V3's tokenizer.json writes them
#: (JSON-decoded: the CR/LF are the characters themselves).
PRETOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    "deepseek-v3": (
        r"\p{N}{1,3}",
        "[一-龥\u3040-ゟ゠-ヿ]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
        "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*"
        "|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    ),
}


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes one arch's HF files from another's (values mirror real repos)."""

    model_type: str
    hf_class: str
    attention_bias: bool  # q/k/v projections carry biases (qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k (qwen3, qwen3_moe)
    moe: bool
    tie_word_embeddings: bool
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    bos_token: str | None  # None: tokenizer_config.bos_token is null (Qwen style)
    add_bos_token: bool
    thinking: bool  # <think>/</think> in the vocabulary and the template's enable_thinking switch
    pretokenizer: str  # key of PRETOKENIZER_REGEX or PRETOKENIZER_SPLITS


SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        model_type="llama",
        hf_class="LlamaForCausalLM",
        attention_bias=False,
        qk_norm=False,
        moe=False,
        tie_word_embeddings=True,  # like Llama-3.2-1B/3B
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        bos_token="<|begin_of_text|>",
        add_bos_token=True,
        thinking=False,
        pretokenizer="llama-bpe",
    ),
    "mistral": ArchSpec(
        model_type="mistral",
        hf_class="MistralForCausalLM",
        attention_bias=False,
        qk_norm=False,
        moe=False,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=32768,
        bos_token="<|begin_of_text|>",
        add_bos_token=True,
        thinking=False,
        pretokenizer="llama-bpe",
    ),
    "qwen2": ArchSpec(
        model_type="qwen2",
        hf_class="Qwen2ForCausalLM",
        attention_bias=True,
        qk_norm=False,
        moe=False,
        tie_word_embeddings=True,  # like Qwen2.5-0.5B
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        bos_token=None,
        add_bos_token=False,
        thinking=False,
        pretokenizer="qwen2",
    ),
    "qwen3": ArchSpec(
        model_type="qwen3",
        hf_class="Qwen3ForCausalLM",
        attention_bias=False,
        qk_norm=True,
        moe=False,
        tie_word_embeddings=True,  # like Qwen3-0.6B
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=40960,
        bos_token=None,
        add_bos_token=False,
        thinking=True,
        pretokenizer="qwen2",
    ),
    "qwen3_moe": ArchSpec(
        model_type="qwen3_moe",
        hf_class="Qwen3MoeForCausalLM",
        attention_bias=False,
        qk_norm=True,
        moe=True,
        tie_word_embeddings=False,  # like Qwen3-30B-A3B
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=40960,
        bos_token=None,
        add_bos_token=False,
        thinking=True,
        pretokenizer="qwen2",
    ),
    # Text-only Gemma 3 (Gemma3ForCausalLM, like gemma-3-1b-it): qk-norm, four norms per layer,
    # GeLU-tanh MLP, embeddings scaled by sqrt(hidden), sliding-window layers. The tokenizer is
    # the shared byte-level BPE (llama.cpp's "gpt2" vocab path for repos without tokenizer.model).
    "gemma3_text": ArchSpec(
        model_type="gemma3_text",
        hf_class="Gemma3ForCausalLM",
        attention_bias=False,
        qk_norm=True,
        moe=False,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        bos_token="<|begin_of_text|>",
        add_bos_token=True,
        thinking=False,
        pretokenizer="llama-bpe",
    ),
    # GLM-4.5-style MoE (Glm4MoeForCausalLM): leading dense layers, sigmoid router with a
    # score-correction bias, a shared expert, partial rotary (half of each head), q/k/v biases.
    "glm4_moe": ArchSpec(
        model_type="glm4_moe",
        hf_class="Glm4MoeForCausalLM",
        attention_bias=True,
        qk_norm=False,
        moe=True,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        bos_token=None,
        add_bos_token=False,
        thinking=True,
        pretokenizer="llama-bpe",  # GLM-4's regex is Llama-3's (llama.cpp's "glm4")
    ),
    # DeepSeek-V3-style (DeepseekV3ForCausalLM): multi-head latent attention with a q LoRA,
    # YaRN RoPE on part of each head, one dense layer first, then a sigmoid router with a
    # score-correction bias, grouped expert selection and a shared expert.
    "deepseek_v3": ArchSpec(
        model_type="deepseek_v3",
        hf_class="DeepseekV3ForCausalLM",
        attention_bias=False,
        qk_norm=False,
        moe=True,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=163840,
        bos_token="<|begin_of_text|>",
        add_bos_token=True,
        thinking=False,
        pretokenizer="deepseek-v3",
    ),
    # DeepSeek-V2-Lite-style: softmax router without renormalisation, no q LoRA, two shared
    # experts.
    "deepseek_v2": ArchSpec(
        model_type="deepseek_v2",
        hf_class="DeepseekV2ForCausalLM",
        attention_bias=False,
        qk_norm=False,
        moe=True,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=163840,
        bos_token="<|begin_of_text|>",
        add_bos_token=True,
        thinking=False,
        pretokenizer="llama-bpe",
    ),
}

# Shape parameters of the ~25.7M-parameter fp32 qwen3 used where per-token overheads must show.
QWEN3_25M: dict[str, Any] = {
    "hidden_size": 512,
    "num_layers": 8,
    "num_heads": 8,
    "num_kv_heads": 4,
    "head_dim": 64,
    "intermediate_size": 1536,
}

# Original text (prose, Python, JSON, shell, a little non-ASCII) so the BPE learns merges for the
# kinds of strings tests send: chat messages, code, tool-call JSON.
CORPUS = r"""
A local model server answers requests from editors and terminals on the same machine. It loads a
model once, keeps the weights in memory, and streams tokens back as soon as they are sampled. The
configuration file names every model, the quantization to use, and the port to listen on. When the
file changes, the server reloads only the parts that changed, so a running chat is not interrupted.

Quantization trades a little accuracy for a lot of memory. An eight-bit weight takes a quarter of
the space of a thirty-two-bit float; a four-bit weight takes an eighth. Blocks of thirty-two or two
hundred fifty-six values share a scale, and sometimes a minimum, so that outliers in one block do
not ruin the precision of another. Norms and biases stay in full precision because they are small.

The tokenizer splits text into pieces before the model sees it. Byte-level BPE starts from the two
hundred fifty-six possible bytes and repeatedly merges the most frequent adjacent pair. Frequent
words become single tokens; rare words are spelled out in smaller pieces; nothing is ever unknown.
Special tokens such as the start and end of a message are never split and never learned from text.

Users ask short questions and long ones. "How do I reverse a list in Python?" "Why does my test
fail only on Mondays?" "Summarize this file in three sentences." "Write a function that parses
the date in an ISO 8601 string and returns the weekday." The assistant answers, sometimes with
code, sometimes by calling a tool, and sometimes by saying that it does not know.

def fibonacci(n: int) -> list[int]:
    '''Return the first n Fibonacci numbers.'''
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]


class Cache:
    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self.items: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.items.get(key)

    def put(self, key: str, value: bytes) -> None:
        if len(self.items) >= self.capacity:
            oldest = next(iter(self.items))
            del self.items[oldest]
        self.items[key] = value


for index, line in enumerate(open("notes.txt", encoding="utf-8")):
    if line.strip() and not line.startswith("#"):
        print(f"{index:04d}: {line.rstrip()}")

import json
import sys
from pathlib import Path

config = json.loads(Path("config.json").read_text())
print(config["model_type"], config["hidden_size"], file=sys.stderr)

{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"name": "read_file", "arguments": {"path": "src/main.py", "start": 10, "end": 42}}
{"role": "user", "content": "What is the weather like in Tokyo today?"}
{"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function"}]}
{"model": "tiny-qwen3", "messages": [], "stream": true, "max_tokens": 256, "temperature": 0.7}

$ curl -s http://127.0.0.1:8080/v1/chat/completions -H "Content-Type: application/json" -d @req.json
$ uv run pytest tests -q -k "gguf and not slow"
$ ls -la ~/.cache/huggingface/hub/models--org--name/snapshots/
$ git log --oneline -n 5 && git status --short

The weather in Paris is mild in spring: twelve to eighteen degrees, with rain on one day in three.
Tokyo is warmer and more humid in summer; the rainy season starts in June and ends in July.
Numbers appear everywhere: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 100, 128, 256, 512, 1024,
2048, 4096, 8192, 32768, 65536, 3.14159, 2.71828, 1e-6, 0.001, -1, 42, 2024, 2025, 2026.

Errors should be short and say what to do next: "model not found: run `local-ai pull` first",
"port 8080 is already in use; choose another port in the config file", "the download was
interrupted; run the command again to resume it", "this quantization needs a row length that is a
multiple of 256".

Un café au lait, s'il vous plaît. Die Straße ist naß. Ça va très bien, merci. Smörgåsbord.
日本語のテキストも少し含めます。中文也可以。Emoji are bytes too: 🙂 🚀 ✅.

Reasoning models think before they answer. The thinking is wrapped in tags so that a client can
show it separately or hide it. Tool calls are wrapped in their own tags and contain a JSON object
with the name of the function and its arguments. A tool result comes back as a message with the
tool role, and the model continues from there until it produces a final answer for the user.

SELECT name, size FROM models WHERE quantization = 'q4_k' ORDER BY size DESC LIMIT 10;
<html><body><h1>Hello, world!</h1><p>It works.</p></body></html>
fn main() { println!("hello from rust"); let total: u64 = (1..=10).sum(); }
const answer = await fetch("/v1/models").then((response) => response.json());
"""

# Jinja template (transformers' chat-template dialect). __BOS__ and __THINK__ are substituted per
# architecture. Messages may carry string content or a list of {"type": "text"} parts; the tools
# block follows Qwen2.5/Qwen3, so mlx-lm infers its json_tools parser from "<tool_call>" and
# "tool_call.name".
_CHAT_TEMPLATE = r"""__BOS__
{%- macro render_content(content) -%}
{%- if content is none -%}
{%- elif content is string -%}{{ content }}
{%- else -%}
{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages and messages[0].role == 'system' %}
{{- render_content(messages[0].content) + '\n\n' }}
{%- endif %}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and ' }}
{{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages and messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + render_content(messages[0].content) + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- if not loop.first %}
{{- '<|im_start|>system\n' + render_content(message.content) + '<|im_end|>\n' }}
{%- endif %}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\n<tool_response>\n' + render_content(message.content) + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
{{- '<|im_end|>\n' }}
{%- endif %}
{%- else %}
{%- set content = render_content(message.content) %}
{{- '<|im_start|>' + message.role + '\n' + content }}
{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}
{%- if content or not loop.first %}{{- '\n' }}{%- endif %}
{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}
{{- tool_call.arguments }}
{%- else %}
{{- tool_call.arguments | tojson }}
{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}__THINK__
{%- endif %}"""

_THINK_OFF = (
    "\n{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
)


def chat_template(arch: str) -> str:
    """The ChatML template for ``arch``: BOS for Llama-style archs, think switch for Qwen3."""
    spec = SPECS[arch]
    bos = "{{- bos_token }}" if spec.add_bos_token else ""
    return _CHAT_TEMPLATE.replace("__BOS__", bos).replace(
        "__THINK__", _THINK_OFF if spec.thinking else ""
    )


def added_tokens(arch: str) -> list[tuple[int, str, bool]]:
    """``(id, content, special)`` for the tokens appended after the BPE vocabulary."""
    first = TOKENIZER_VOCAB_SIZE - len(_ADDED_TOKENS)
    out: list[tuple[int, str, bool]] = []
    for i, (content, special) in enumerate(_ADDED_TOKENS):
        if not SPECS[arch].thinking and content in ("<think>", "</think>"):
            slots = _TURN_SLOTS.get(arch, _RESERVED_THINK)
            out.append((first + i, slots[content == "</think>"], True))
        else:
            out.append((first + i, content, special))
    return out


def token_id(arch: str, content: str) -> int:
    """Id of an added token (``<|im_end|>`` …) in ``arch``'s tokenizer."""
    for tid, text, _ in added_tokens(arch):
        if text == content:
            return tid
    raise KeyError(content)


@functools.lru_cache(maxsize=1)
def _trained_bpe_json() -> str:
    """Train the byte-level BPE once per process (the slow part of building a model directory)."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZER_REGEX["qwen2"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE - len(_ADDED_TOKENS),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer)
    if tok.get_vocab_size() != TOKENIZER_VOCAB_SIZE - len(_ADDED_TOKENS):
        raise RuntimeError(f"corpus too small: BPE vocabulary has {tok.get_vocab_size()} entries")
    return str(tok.to_str())


def tokenizer_json(arch: str) -> dict[str, Any]:
    """The ``tokenizer.json`` document for ``arch`` (shared merges, per-arch regex/specials/BOS)."""
    doc: dict[str, Any] = json.loads(_trained_bpe_json())
    spec = SPECS[arch]
    if spec.pretokenizer in PRETOKENIZER_SPLITS:
        split = doc["pre_tokenizer"]["pretokenizers"][0]
        doc["pre_tokenizer"]["pretokenizers"][:1] = [
            {**split, "pattern": {"Regex": regex}}
            for regex in PRETOKENIZER_SPLITS[spec.pretokenizer]
        ]
    else:
        doc["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {
            "Regex": PRETOKENIZER_REGEX[spec.pretokenizer]
        }
    doc["added_tokens"] = [
        {
            "id": tid,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for tid, content, special in added_tokens(arch)
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    if spec.add_bos_token:
        assert spec.bos_token is not None
        bos_id = token_id(arch, spec.bos_token)
        template = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": spec.bos_token, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": spec.bos_token, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": spec.bos_token, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                spec.bos_token: {"id": spec.bos_token, "ids": [bos_id], "tokens": [spec.bos_token]}
            },
        }
        doc["post_processor"] = {"type": "Sequence", "processors": [byte_level, template]}
    else:
        doc["post_processor"] = byte_level
    return doc


def tokenizer_config(arch: str) -> dict[str, Any]:
    """The ``tokenizer_config.json`` document for ``arch``."""
    spec = SPECS[arch]
    return {
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(tid): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for tid, content, special in added_tokens(arch)
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": spec.bos_token,
        "chat_template": chat_template(arch),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": spec.max_position_embeddings,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def build_tokenizer(out_dir: str | Path, arch: str = "qwen3") -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``arch``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "tokenizer.json", tokenizer_json(arch))
    _write_json(out / "tokenizer_config.json", tokenizer_config(arch))
    return out


def model_config(
    arch: str = "qwen3",
    *,
    dtype: DType = "float32",
    hidden_size: int = 64,
    num_layers: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = TOKENIZER_VOCAB_SIZE,
    tie_word_embeddings: bool | None = None,
    num_experts: int = 4,
    num_experts_per_tok: int = 2,
    moe_intermediate_size: int | None = None,
    decoder_sparse_step: int = 1,
    mlp_only_layers: Sequence[int] = (),
    norm_topk_prob: bool = True,
    max_position_embeddings: int | None = None,
) -> dict[str, Any]:
    """The HF ``config.json`` for ``arch`` with the keys real checkpoints of that family carry."""
    spec = SPECS[arch]
    num_layers = num_layers or default_layers(arch)
    if vocab_size < TOKENIZER_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {TOKENIZER_VOCAB_SIZE} (the tokenizer size)")
    hd = head_dim if head_dim is not None else hidden_size // num_heads
    ffn = intermediate_size if intermediate_size is not None else 2 * hidden_size
    tie = spec.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
    bos_id = token_id(arch, spec.bos_token or "<|endoftext|>")
    cfg: dict[str, Any] = {
        "architectures": [spec.hf_class],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": token_id(arch, "<|im_end|>"),
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "max_position_embeddings": max_position_embeddings or spec.max_position_embeddings,
        "model_type": spec.model_type,
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": tie,
        "torch_dtype": dtype,
        "transformers_version": "4.51.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if arch == "llama":
        cfg |= {
            "attention_bias": False,
            "head_dim": hd,
            "mlp_bias": False,
            "pretraining_tp": 1,
        }
    elif arch == "mistral":
        cfg |= {"head_dim": hd, "sliding_window": None}
    elif arch == "qwen2":
        if head_dim is not None and head_dim != hidden_size // num_heads:
            raise ValueError("qwen2 derives head_dim from hidden_size / num_attention_heads")
        cfg |= {
            "max_window_layers": num_layers,
            "sliding_window": cfg["max_position_embeddings"],
            "use_sliding_window": False,
        }
    elif arch == "gemma3_text":
        del cfg["hidden_act"]
        cfg |= {
            # like gemma-3's [<eos>, <end_of_turn>]
            "eos_token_id": [token_id(arch, "<|im_end|>"), token_id(arch, "<end_of_turn>")],
            "attention_bias": False,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "head_dim": hd,
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": hd,
            "rope_local_base_freq": 10000.0,
            # Short, so the two test prompts (~23 tokens) really use the window.
            "sliding_window": 16,
            "sliding_window_pattern": GEMMA3_SLIDING_WINDOW_PATTERN,
        }
    elif arch == "glm4_moe":
        cfg |= {
            "attention_bias": True,
            "first_k_dense_replace": 1,
            "head_dim": hd,
            "moe_intermediate_size": moe_intermediate_size or hidden_size,
            "n_group": 1,
            "n_routed_experts": num_experts,
            "n_shared_experts": 1,
            "norm_topk_prob": norm_topk_prob,
            "num_experts_per_tok": num_experts_per_tok,
            "num_nextn_predict_layers": 0,
            "partial_rotary_factor": 0.5,
            "routed_scaling_factor": 2.5,
            "topk_group": 1,
            "use_qk_norm": False,
        }
    elif arch in MLA_ARCHS:
        cfg |= _mla_config(
            arch,
            hidden_size=hidden_size,
            num_heads=num_heads,
            head_dim=hd,
            num_experts=num_experts,
            num_experts_per_tok=num_experts_per_tok,
            moe_intermediate_size=moe_intermediate_size or hidden_size,
            norm_topk_prob=norm_topk_prob,
        )
    else:  # qwen3, qwen3_moe
        cfg |= {
            "attention_bias": False,
            "head_dim": hd,
            "max_window_layers": num_layers,
            "sliding_window": None,
            "use_sliding_window": False,
        }
    if spec.moe and arch == "qwen3_moe":
        cfg |= {
            "decoder_sparse_step": decoder_sparse_step,
            "mlp_only_layers": list(mlp_only_layers),
            "moe_intermediate_size": moe_intermediate_size or hidden_size,
            "norm_topk_prob": norm_topk_prob,
            "num_experts": num_experts,
            "num_experts_per_tok": num_experts_per_tok,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.001,
        }
    return dict(sorted(cfg.items()))


def _mla_config(
    arch: str,
    *,
    hidden_size: int,
    num_heads: int,
    head_dim: int,
    num_experts: int,
    num_experts_per_tok: int,
    moe_intermediate_size: int,
    norm_topk_prob: bool,
) -> dict[str, Any]:
    """DeepSeek V2/V3 keys, with the real models' proportions: the non-rotary part of a key
    head and the value head are ``head_dim`` wide, the rotary part half of that; the latent
    ranks are the hidden size (so rows stay multiples of 256 in the wide variant)."""
    common: dict[str, Any] = {
        "attention_bias": False,
        "first_k_dense_replace": 1,
        "kv_lora_rank": hidden_size,
        "moe_intermediate_size": moe_intermediate_size,
        "moe_layer_freq": 1,
        "n_routed_experts": num_experts,
        "num_experts_per_tok": num_experts_per_tok,
        "num_key_value_heads": num_heads,  # as the real configs say: MLA decompresses per head
        "qk_nope_head_dim": head_dim,
        "qk_rope_head_dim": head_dim // 2,
        "v_head_dim": head_dim,
    }
    if arch == "deepseek_v3":
        return common | {
            "n_group": 2,
            "n_shared_experts": 1,
            "norm_topk_prob": norm_topk_prob,
            "num_nextn_predict_layers": 0,
            "q_lora_rank": hidden_size,
            "rope_scaling": {  # DeepSeek-V3's
                "beta_fast": 32,
                "beta_slow": 1,
                "factor": 40,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": 4096,
                "type": "yarn",
            },
            "routed_scaling_factor": 2.5,
            "scoring_func": "sigmoid",
            "topk_group": 1,
            "topk_method": "noaux_tc",
        }
    return common | {  # deepseek_v2, as DeepSeek-V2-Lite
        "n_group": 1,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "q_lora_rank": None,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
        "routed_scaling_factor": 1.0,
        "scoring_func": "softmax",
        "topk_group": 1,
        "topk_method": "greedy",
    }


def default_layers(arch: str) -> int:
    """2; 6 for Gemma 3: one global layer after five sliding ones (mlx-lm's gemma3_text
    indexes its caches by the pattern, so it needs at least that many layers); 3 for DeepSeek:
    one dense layer, then two MoE layers."""
    if arch == "gemma3_text":
        return GEMMA3_SLIDING_WINDOW_PATTERN
    return 3 if arch in MLA_ARCHS else 2


def head_dim_of(config: Mapping[str, Any]) -> int:
    """``head_dim`` as HF computes it when the key is absent."""
    hd = config.get("head_dim")
    return int(hd) if hd else int(config["hidden_size"]) // int(config["num_attention_heads"])


def is_moe_layer(config: Mapping[str, Any], layer: int) -> bool:
    """Whether ``layer`` has a sparse MoE block (HF/mlx-lm's qwen3_moe rule)."""
    if config.get("n_routed_experts"):  # glm4_moe, deepseek: dense first, then MoE
        return layer >= int(config.get("first_k_dense_replace", 0))
    if not config.get("num_experts"):
        return False
    step = int(config.get("decoder_sparse_step", 1))
    return layer not in config.get("mlp_only_layers", []) and (layer + 1) % step == 0


def weight_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes (out, in) for ``config``, in file order."""
    h = int(config["hidden_size"])
    v = int(config["vocab_size"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config["num_key_value_heads"])
    hd = head_dim_of(config)
    ffn = int(config["intermediate_size"])
    mt = config["model_type"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (h,)
        if mt in MLA_ARCHS:
            shapes |= _mla_shapes(config, p)
        else:
            shapes[f"{p}.self_attn.q_proj.weight"] = (n_head * hd, h)
            shapes[f"{p}.self_attn.k_proj.weight"] = (n_kv * hd, h)
            shapes[f"{p}.self_attn.v_proj.weight"] = (n_kv * hd, h)
            shapes[f"{p}.self_attn.o_proj.weight"] = (h, n_head * hd)
        if mt == "qwen2" or config.get("attention_bias"):
            shapes[f"{p}.self_attn.q_proj.bias"] = (n_head * hd,)
            shapes[f"{p}.self_attn.k_proj.bias"] = (n_kv * hd,)
            shapes[f"{p}.self_attn.v_proj.bias"] = (n_kv * hd,)
        if mt in ("qwen3", "qwen3_moe", "gemma3_text"):
            shapes[f"{p}.self_attn.q_norm.weight"] = (hd,)
            shapes[f"{p}.self_attn.k_norm.weight"] = (hd,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        if mt == "gemma3_text":
            shapes[f"{p}.pre_feedforward_layernorm.weight"] = (h,)
            shapes[f"{p}.post_feedforward_layernorm.weight"] = (h,)
        if is_moe_layer(config, i):
            n_exp = int(config.get("num_experts") or config["n_routed_experts"])
            moe_ffn = int(config["moe_intermediate_size"])
            shapes[f"{p}.mlp.gate.weight"] = (n_exp, h)
            if mt in ("glm4_moe", "deepseek_v3"):
                shapes[f"{p}.mlp.gate.e_score_correction_bias"] = (n_exp,)
            for e in range(n_exp):
                shapes[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (moe_ffn, h)
                shapes[f"{p}.mlp.experts.{e}.up_proj.weight"] = (moe_ffn, h)
                shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (h, moe_ffn)
            if config.get("n_shared_experts"):
                shared = moe_ffn * int(config["n_shared_experts"])
                shapes[f"{p}.mlp.shared_experts.gate_proj.weight"] = (shared, h)
                shapes[f"{p}.mlp.shared_experts.up_proj.weight"] = (shared, h)
                shapes[f"{p}.mlp.shared_experts.down_proj.weight"] = (h, shared)
        else:
            shapes[f"{p}.mlp.gate_proj.weight"] = (ffn, h)
            shapes[f"{p}.mlp.up_proj.weight"] = (ffn, h)
            shapes[f"{p}.mlp.down_proj.weight"] = (h, ffn)
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def _mla_shapes(config: Mapping[str, Any], p: str) -> dict[str, tuple[int, ...]]:
    """DeepSeek attention: q (through a LoRA when q_lora_rank is set), the joint KV latent with
    the shared rotary key, and kv_b decompressing the latent into per-head keys and values."""
    h = int(config["hidden_size"])
    n_head = int(config["num_attention_heads"])
    nope, rope = int(config["qk_nope_head_dim"]), int(config["qk_rope_head_dim"])
    v, kv_rank = int(config["v_head_dim"]), int(config["kv_lora_rank"])
    q_rank = config.get("q_lora_rank")
    a = f"{p}.self_attn"
    out: dict[str, tuple[int, ...]] = {}
    if q_rank:
        out[f"{a}.q_a_proj.weight"] = (int(q_rank), h)
        out[f"{a}.q_a_layernorm.weight"] = (int(q_rank),)
        out[f"{a}.q_b_proj.weight"] = (n_head * (nope + rope), int(q_rank))
    else:
        out[f"{a}.q_proj.weight"] = (n_head * (nope + rope), h)
    out[f"{a}.kv_a_proj_with_mqa.weight"] = (kv_rank + rope, h)
    out[f"{a}.kv_a_layernorm.weight"] = (kv_rank,)
    out[f"{a}.kv_b_proj.weight"] = (n_head * (nope + v), kv_rank)
    out[f"{a}.o_proj.weight"] = (h, n_head * v)
    return out


def parameter_count(config: Mapping[str, Any]) -> int:
    """Number of stored parameters (tied embeddings counted once)."""
    return sum(math.prod(shape) for shape in weight_shapes(config).values())


def make_weights(config: Mapping[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 random weights for ``config``; each tensor depends only on ``(seed, name, shape)``.

    Scales are chosen so a forward pass stays well conditioned and logits differ across tokens:
    embeddings/lm_head ~N(0, 2.5/sqrt(hidden)) so next-token logits have a std of about 2 (a top
    token with a few percent to tens of percent of the mass, not a flat distribution),
    projections ~N(0, 1/sqrt(fan_in)) (0.02 floor), biases ~N(0, 0.02), norms 1 + N(0, 0.05)
    (N(0, 0.05) for archs that scale by 1 + weight, so the effective scale is the same),
    router ~N(0, 0.5/sqrt(hidden)) so experts are chosen unevenly.
    """
    out: dict[str, np.ndarray] = {}
    norm_center = 0.0 if config["model_type"] in OFFSET_NORM_ARCHS else 1.0
    for name, shape in weight_shapes(config).items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("norm.weight"):
            arr = norm_center + 0.05 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            arr = 0.02 * rng.standard_normal(shape)
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            arr = (2.5 / math.sqrt(shape[1])) * rng.standard_normal(shape)
        elif name.endswith("e_score_correction_bias"):
            arr = 0.1 * rng.standard_normal(shape)
        elif name.endswith("mlp.gate.weight"):
            arr = (0.5 / math.sqrt(shape[1])) * rng.standard_normal(shape)
        else:
            arr = max(0.02, 1.0 / math.sqrt(shape[-1])) * rng.standard_normal(shape)
        out[name] = arr.astype(np.float32)
    return out


def to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, as torch does."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def cast_weights(weights: Mapping[str, np.ndarray], dtype: DType) -> dict[str, np.ndarray]:
    """The values actually stored for ``dtype`` (as float32), for comparisons against exports."""
    if dtype == "float32":
        return {k: v.astype(np.float32) for k, v in weights.items()}
    if dtype == "float16":
        return {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
    return {k: from_bf16_bits(to_bf16_bits(v)) for k, v in weights.items()}


def save_safetensors(
    path: str | Path, weights: Mapping[str, np.ndarray], dtype: DType = "float32"
) -> Path:
    """Write ``weights`` in ``dtype``; bfloat16 goes through safetensors' TensorSpec API.

    numpy has no bfloat16, so ``safetensors.numpy.save_file`` cannot write it; the uint16 bit
    patterns are handed to the serializer with dtype ``bfloat16`` instead. MoE score-correction
    biases stay float32 whatever ``dtype`` is, as in GLM/DeepSeek checkpoints.
    """
    from safetensors import TensorSpec, serialize_file
    from safetensors.numpy import save_file

    path = Path(path)
    metadata = {"format": "pt"}
    if dtype in ("float32", "float16"):
        np_dtype = np.float32 if dtype == "float32" else np.float16
        save_file(
            {
                k: np.ascontiguousarray(v.astype(np.float32 if _keeps_fp32(k) else np_dtype))
                for k, v in weights.items()
            },
            str(path),
            metadata=metadata,
        )
        return path
    buffers = {
        k: np.ascontiguousarray(v.astype(np.float32) if _keeps_fp32(k) else to_bf16_bits(v))
        for k, v in weights.items()
    }
    specs = {
        k: TensorSpec(
            dtype="float32" if _keeps_fp32(k) else "bfloat16",
            shape=list(b.shape),
            data_ptr=b.ctypes.data,
            data_len=b.nbytes,
        )
        for k, b in buffers.items()
    }
    serialize_file(specs, str(path), metadata=metadata)
    return path


def _keeps_fp32(name: str) -> bool:
    return name.endswith("e_score_correction_bias")


_ST_DTYPES: dict[str, Any] = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def load_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file as float32 arrays plus each tensor's stored dtype (F32/F16/BF16).

    Parsed by hand because ``safetensors.numpy`` cannot represent bfloat16.
    """
    raw = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header: dict[str, Any] = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        np_dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        count = (end - start) // np_dtype.itemsize
        arr = np.frombuffer(raw, dtype=np_dtype, count=count, offset=base + start)
        arr = arr.reshape(info["shape"])
        tensors[name] = from_bf16_bits(arr) if info["dtype"] == "BF16" else arr.astype(np.float32)
        dtypes[name] = info["dtype"]
    return tensors, dtypes


def generation_config(arch: str) -> dict[str, Any]:
    """``generation_config.json``: both end tokens stop generation, Qwen-style sampling defaults."""
    cfg = model_config(arch)
    return {
        "bos_token_id": cfg["bos_token_id"],
        "do_sample": True,
        "eos_token_id": [token_id(arch, "<|im_end|>"), token_id(arch, "<|endoftext|>")],
        "pad_token_id": token_id(arch, "<|endoftext|>"),
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "transformers_version": "4.51.0",
    }


def build_model(
    out_dir: str | Path,
    arch: str = "qwen3",
    *,
    dtype: DType = "float32",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = TOKENIZER_VOCAB_SIZE,
    tie_word_embeddings: bool | None = None,
    num_experts: int = 4,
    num_experts_per_tok: int = 2,
    moe_intermediate_size: int | None = None,
    decoder_sparse_step: int = 1,
    mlp_only_layers: Sequence[int] = (),
    norm_topk_prob: bool = True,
    max_position_embeddings: int | None = None,
) -> Path:
    """Write a complete random-weight HF model directory for ``arch`` and return its path.

    Defaults give a 0.14M-0.26M-parameter model (hidden 64, 2 layers (6 for gemma3_text), 4
    heads, 2 KV heads, head_dim 16, vocab 1024; 4 experts with top-2 for qwen3_moe) that loads
    and generates in well under a second with mlx-lm on CPU. Shape parameters that an arch does
    not use are ignored.
    """
    if arch not in SPECS:
        raise ValueError(
            f"unknown arch {arch!r}; expected one of {ARCHITECTURES + EXTRA_ARCHITECTURES}"
        )
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(
        arch,
        dtype=dtype,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        tie_word_embeddings=tie_word_embeddings,
        num_experts=num_experts,
        num_experts_per_tok=num_experts_per_tok,
        moe_intermediate_size=moe_intermediate_size,
        decoder_sparse_step=decoder_sparse_step,
        mlp_only_layers=mlp_only_layers,
        norm_topk_prob=norm_topk_prob,
        max_position_embeddings=max_position_embeddings,
    )
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation_config(arch))
    save_safetensors(out / "model.safetensors", make_weights(config, seed), dtype)
    build_tokenizer(out, arch)
    return out


def build_qwen3_25m(out_dir: str | Path, *, seed: int = 0, dtype: DType = "float32") -> Path:
    """The ~25.7M-parameter qwen3 (hidden 512, 8 layers) benchmarks use: ~100 MB in fp32."""
    return build_model(out_dir, "qwen3", dtype=dtype, seed=seed, **QWEN3_25M)


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Pretty, stable JSON (sorted where the producer sorted; UTF-8 kept readable)."""
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
