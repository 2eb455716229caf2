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
# DeepSeek LLM / DeepSeek-V2 / V2.5 ("deepseek-llm"): five Splits, then every digit on its own
# (deepseek-llm-7b-base's and DeepSeek-V2's tokenizer.json). Each line break alone; an optional
# whitespace plus a run of cased letters (Unicode's Lu/Ll/Lt ranges, as the file lists them);
# an optional whitespace plus ASCII/fullwidth/CJK punctuation; trailing whitespace; CJK and
# Hangul runs. llama.cpp's list ends in \p{N}+ instead of single digits, which gives the
# same tokens for a vocabulary trained with split digits.
_DEEPSEEK_LLM_REGEXES: Final = (
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
)


@dataclass(frozen=True)
class PreTokenizer:
    """What runs before byte-level BPE: NFC normalisation, then ``splits`` in turn (each an
    isolating regex Split; none: GPT-2's own regex inside ByteLevel), then, with
    ``single_digits``, every digit split off on its own."""

    nfc: bool = False
    splits: tuple[str, ...] = ()
    single_digits: bool = False


# llama.cpp's ``tokenizer.ggml.pre`` names.
PRE_TOKENIZERS: Final[dict[str, PreTokenizer]] = {
    "llama-bpe": PreTokenizer(splits=(_LLAMA3_REGEX,)),
    "llama3": PreTokenizer(splits=(_LLAMA3_REGEX,)),
    "qwen2": PreTokenizer(nfc=True, splits=(_QWEN2_REGEX,)),
    "deepseek-r1-qwen": PreTokenizer(nfc=True, splits=(_QWEN2_REGEX,)),
    "deepseek-v3": PreTokenizer(splits=_DEEPSEEK3_REGEXES),
    "deepseek-llm": PreTokenizer(splits=_DEEPSEEK_LLM_REGEXES, single_digits=True),
    "glm4": PreTokenizer(splits=(_LLAMA3_REGEX,)),  # llama.cpp's CHATGLM4 regex is Llama-3's
    "chatglm-bpe": PreTokenizer(splits=(_LLAMA3_REGEX,)),
    "gpt-2": PreTokenizer(),
    "gpt2": PreTokenizer(),
    "default": PreTokenizer(),
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
    spec = PRE_TOKENIZERS[pre]
    if spec.nfc:
        tokenizer.normalizer = normalizers.NFC()
    if not spec.splits:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=False, trim_offsets=False, use_regex=True
        )
    else:
        steps: list[Any] = [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
            for regex in spec.splits
        ]
        if spec.single_digits:
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        steps.append(
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
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
