"""GGUF tokenizer metadata -> ``tokenizer.json`` + ``tokenizer_config.json``.

The tokenizer model is built by transformers' GGUF converters (``transformers.integrations.ggml``,
importable without torch), then completed with what they leave out or get wrong for our purpose:

* the pre-tokenizer regex named by ``tokenizer.ggml.pre`` (the converters use GPT-2's or Qwen2's
  regardless), so numbers and contractions split as in the original tokenizer;
* every CONTROL token as a special added token and every USER_DEFINED token (``<think>``,
  ``<tool_call>``) as a non-special added token, so they encode to one id;
* BOS/EOS insertion as the GGUF's ``add_bos_token``/``add_eos_token`` say;
* for SentencePiece vocabularies, the decoder steps in HF's order, so mlx-lm streams them with
  its SentencePiece detokenizer (it matches the decoder's JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from local_ai.convert.chat_template import check_chat_template
from local_ai.convert.gguf_reader import FLOAT_TYPES, INTEGER_TYPES, STRING, GGUFFile
from local_ai.errors import MalformedFileError, NotYetError

# llama.cpp token types (llama_token_type / gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer names -> (normalize to NFC, Split regex or None for GPT-2's ByteLevel).
# Regexes as the original tokenizer.json files write them.
_LLAMA3_REGEX: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek-V3/R1: three Splits applied in turn (llama.cpp's DEEPSEEK3_LLM regex list).
_DEEPSEEK3_REGEXES: Final = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
PRE_TOKENIZERS: Final[dict[str, tuple[bool, tuple[str, ...]]]] = {
    "llama-bpe": (False, (_LLAMA3_REGEX,)),
    "llama3": (False, (_LLAMA3_REGEX,)),
    "qwen2": (True, (_QWEN2_REGEX,)),
    "deepseek-r1-qwen": (True, (_QWEN2_REGEX,)),
    "deepseek-v3": (False, _DEEPSEEK3_REGEXES),
    "glm4": (False, (_LLAMA3_REGEX,)),  # llama.cpp's CHATGLM4 regex is Llama-3's
    "chatglm-bpe": (False, (_LLAMA3_REGEX,)),
    "gpt-2": (False, ()),  # (): GPT-2's own regex, inside ByteLevel
    "gpt2": (False, ()),
    "default": (False, ()),
}


@dataclass
class TokenizerFiles:
    tokenizer_json: str
    tokenizer_config: dict[str, Any]
    bos_token_id: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    warnings: list[str] = field(default_factory=list)


def _ids(gguf: GGUFFile, n_tokens: int) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in ("bos", "eos", "eot", "eom", "padding", "unknown"):
        key = f"tokenizer.ggml.{name}_token_id"
        if not gguf.has(key):
            out[name] = None
            continue
        value = gguf.get_int(key, minimum=-1, maximum=1 << 31)
        if value >= n_tokens:
            raise MalformedFileError(
                gguf.path, f"metadata {key!r}", f"token id {value} >= vocabulary size {n_tokens}"
            )
        out[name] = value if value >= 0 else None
    return out


def build_tokenizer(
    gguf: GGUFFile, *, model_max_length: int | None = None, end_of_turn: tuple[str, ...] = ()
) -> TokenizerFiles:
    """The tokenizer files for ``gguf`` (raises NotYetError for tokenizer kinds not supported).

    ``end_of_turn``: control tokens that also end generation when the vocabulary has them (as
    llama.cpp's vocab loader finds ``<end_of_turn>`` by its text; Gemma GGUFs store only
    ``<eos>`` as the end token)."""
    kind = gguf.get_str("tokenizer.ggml.model")
    tokens = gguf.get_array("tokenizer.ggml.tokens", frozenset({STRING}))
    if not tokens:
        raise MalformedFileError(gguf.path, "metadata 'tokenizer.ggml.tokens'", "missing or empty")
    n = len(tokens)
    types = gguf.get_array("tokenizer.ggml.token_type", INTEGER_TYPES) or [NORMAL] * n
    if len(types) != n:
        raise MalformedFileError(
            gguf.path,
            "metadata 'tokenizer.ggml.token_type'",
            f"has {len(types)} entries for {n} tokens",
        )
    ids = _ids(gguf, n)
    add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token", False)
    add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token", False)
    warnings: list[str] = []

    if kind == "gpt2":
        tokenizer = _byte_level_bpe(gguf, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(gguf, tokens, types, ids)
    else:
        raise NotYetError(
            f"{gguf.path}: tokenizer model {kind!r} is not supported yet",
            hint="supported GGUF tokenizers: 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)",
        )

    from tokenizers import AddedToken, processors

    added = []
    for text, ttype in zip(tokens, types, strict=True):
        if ttype in (CONTROL, USER_DEFINED):
            # AddedToken ids follow the vocabulary, so these keep their GGUF ids.
            added.append(AddedToken(text, special=ttype == CONTROL, normalized=False))
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])

    def content(tid: int | None) -> str | None:
        return None if tid is None else str(tokens[tid])

    bos, eos = content(ids["bos"]), content(ids["eos"])
    if add_bos and bos is None:
        raise MalformedFileError(
            gguf.path, "metadata 'tokenizer.ggml.add_bos_token'", "is true but no bos_token_id"
        )
    if add_eos and eos is None:
        raise MalformedFileError(
            gguf.path, "metadata 'tokenizer.ggml.add_eos_token'", "is true but no eos_token_id"
        )
    if add_bos or add_eos:
        single = ([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else [])
        pair = (
            single
            + ([f"{bos}:1"] if add_bos else [])
            + ["$B:1"]
            + ([f"{eos}:1"] if add_eos else [])
        )
        specials = {(t, i) for t, i in ((bos, ids["bos"]), (eos, ids["eos"])) if t is not None}
        template = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=sorted(specials, key=lambda x: x[1] or 0)
        )
        if kind == "gpt2":
            tokenizer.post_processor = processors.Sequence(
                [processors.ByteLevel(trim_offsets=False), template]
            )
        else:
            tokenizer.post_processor = template
    elif kind == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    special_map = {"bos_token": bos, "eos_token": eos}
    config: dict[str, Any] = {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "added_tokens_decoder": {
            str(tid): {
                "content": tokens[tid],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": types[tid] == CONTROL,
            }
            for tid in range(n)
            if types[tid] in (CONTROL, USER_DEFINED)
        },
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": content(ids["padding"]),
        "unk_token": content(ids["unknown"]),
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    if kind == "llama":
        config["add_prefix_space"] = gguf.get_bool("tokenizer.ggml.add_space_prefix", True)
        config["legacy"] = False

    template = _chat_template(gguf)
    if template is not None:
        config["chat_template"] = template
        main = template if isinstance(template, str) else template[0]["template"]
        problem = check_chat_template(main, special_map)
        if problem:
            warnings.append(f"the chat template does not render a simple conversation: {problem}")
    else:
        warnings.append("the GGUF has no chat template; chat requests will use a plain prompt")

    eos_ids = [i for i in (ids["eos"], ids["eot"], ids["eom"]) if i is not None]
    for text in end_of_turn:
        tid = next((i for i, t in enumerate(tokens) if t == text and types[i] == CONTROL), None)
        if tid is not None:
            eos_ids.append(tid)
    return TokenizerFiles(
        tokenizer_json=tokenizer.to_str(),
        tokenizer_config=dict(sorted(config.items())),
        bos_token_id=ids["bos"],
        eos_token_ids=list(dict.fromkeys(eos_ids)),
        pad_token_id=ids["padding"],
        warnings=warnings,
    )


def _chat_template(gguf: GGUFFile) -> str | list[dict[str, str]] | None:
    """The default template, or the list form transformers reads when named variants exist
    (``tokenizer.chat_template.tool_use`` …)."""
    main = gguf.get_str("tokenizer.chat_template", "") or None
    prefix = "tokenizer.chat_template."
    named = {
        key[len(prefix) :]: gguf.get_str(key)
        for key in gguf.metadata
        if key.startswith(prefix) and key[len(prefix) :]
    }
    if not named:
        return main
    out = [{"name": "default", "template": main}] if main else []
    out += [{"name": name, "template": text} for name, text in sorted(named.items())]
    return out


def _merges(gguf: GGUFFile) -> list[tuple[str, str]]:
    raw = gguf.get_array("tokenizer.ggml.merges", frozenset({STRING}))
    if raw is None:
        raise MalformedFileError(gguf.path, "metadata 'tokenizer.ggml.merges'", "missing")
    merges = []
    for i, merge in enumerate(raw):
        left, sep, right = str(merge).partition(" ")
        if not sep or not left or not right or " " in right:
            raise MalformedFileError(
                gguf.path,
                f"metadata 'tokenizer.ggml.merges'[{i}]",
                f"{merge[:40]!r} is not two tokens separated by one space",
            )
        merges.append((left, right))
    return merges


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for tid, text in enumerate(tokens):
        vocab.setdefault(text, tid)  # duplicates: the first id wins, as in llama.cpp
    return vocab


def _byte_level_bpe(gguf: GGUFFile, tokens: list[str]) -> Any:
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers.integrations.ggml import GGUFGPTConverter

    pre = gguf.get_str("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise NotYetError(
            f"{gguf.path}: pre-tokenizer {pre!r} is not supported yet (its splitting rule is not "
            "known to local-ai, and a wrong rule would change token ids silently)",
            hint=f"supported: {', '.join(PRE_TOKENIZERS)}; convert the original safetensors repo "
            "instead",
        )
    merges = _merges(gguf)
    converter_class: Any = GGUFGPTConverter
    converter = converter_class({"tokens": tokens, "merges": [f"{a} {b}" for a, b in merges]})
    tokenizer = converter.converted()
    nfc, regexes = PRE_TOKENIZERS[pre]
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    if not regexes:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=False, trim_offsets=False, use_regex=True
        )
    else:
        splits = [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
            for regex in regexes
        ]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                *splits,
                pre_tokenizers.ByteLevel(
                    add_prefix_space=False, trim_offsets=False, use_regex=False
                ),
            ]
        )
    return tokenizer


def _sentencepiece_bpe(
    gguf: GGUFFile, tokens: list[str], types: list[int], ids: dict[str, int | None]
) -> Any:
    from tokenizers import decoders
    from transformers.integrations.ggml import GGUFLlamaConverter

    scores = gguf.get_array("tokenizer.ggml.scores", FLOAT_TYPES | INTEGER_TYPES)
    if scores is None or len(scores) != len(tokens):
        raise MalformedFileError(
            gguf.path,
            "metadata 'tokenizer.ggml.scores'",
            "a SentencePiece ('llama') tokenizer needs one score per token",
        )
    proto: dict[str, Any] = {
        "tokenizer_type": "llama",
        "tokens": tokens,
        "scores": [float(s) for s in scores],
        "token_type": types,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "unk_token_id": ids["unknown"],
        "add_prefix_space": gguf.get_bool("tokenizer.ggml.add_space_prefix", True),
    }
    if gguf.has("tokenizer.ggml.merges"):
        proto["merges"] = [f"{a} {b}" for a, b in _merges(gguf)]
    elif len(tokens) > 65536:
        # transformers would rebuild merges in O(vocab * token length) Python loops.
        raise NotYetError(f"{gguf.path}: SentencePiece GGUF without merges is not supported")
    converter_class: Any = GGUFLlamaConverter
    tokenizer = converter_class(proto).converted()
    # The same steps in the order HF's Llama/Mistral tokenizer.json files list them, which is
    # what mlx-lm recognises to stream with its linear-time SentencePiece detokenizer.
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto["add_prefix_space"]:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def write_tokenizer(files: TokenizerFiles, out_dir: Any) -> None:
    from pathlib import Path

    out = Path(out_dir)
    (out / "tokenizer.json").write_text(files.tokenizer_json, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(files.tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
