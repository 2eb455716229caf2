"""Byte-level BPE GGUFs whose ``tokenizer.ggml.pre`` names a multi-step pre-tokenizer.

``deepseek-llm`` is what llama.cpp writes for DeepSeek LLM and DeepSeek-V2/V2.5 (and V2-Lite)
GGUFs. The oracle is the ``tokenizers`` library running the pre-tokenizer exactly as those
repos' ``tokenizer.json`` declares it (below, as JSON), on a tiny BPE trained *without* any
pre-tokenization, so its merges cross every boundary the real pre-tokenizer draws (digits,
spaces, punctuation, script changes): any step the converted tokenizer got wrong or left out
changes the ids of the fixed text, which the last test checks step by step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import pytest

from local_ai.convert.gguf_reader import read_gguf
from local_ai.convert.tokenizer import build_tokenizer, write_tokenizer
from tests.harness.tinymodels import CORPUS

# DeepSeek-V2's tokenizer.json "pre_tokenizer" (deepseek-llm-7b-base has the same), with its
# non-ASCII characters \u-escaped.
DEEPSEEK_LLM_PRE_TOKENIZER_JSON = r"""{
  "type": "Sequence",
  "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "[\r\n]"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\ud801\udc00-\ud801\udc4f\ud801\udcb0-\ud801\udcd3\ud801\udcd8-\ud801\udcfb\ud803\udc80-\ud803\udcb2\ud803\udcc0-\ud803\udcf2\ud806\udca0-\ud806\udcdf\ud83a\udd00-\ud83a\udd43]+"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "\\s+$"}, "behavior": "Isolated", "invert": false},
    {"type": "Split", "pattern": {"Regex": "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"}, "behavior": "Isolated", "invert": false},
    {"type": "Digits", "individual_digits": true},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
  ]
}"""  # noqa: E501

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# Each split exercised: line breaks (LF, CRLF, blank lines), letters after one space or tab,
# Greek/Cyrillic/accented/Kelvin-sign letters (cased), kana, CJK and Hangul runs next to
# letters and digits, ASCII and fullwidth punctuation, contractions, runs of spaces, digits
# (one by one), trailing whitespace at the end of a line and of the text.
TEXT = (
    "The server loads 12 models in 2048 ms, doesn't it? It's 3.14159!\n"
    "\n"
    "def f(x):\r\n    return x ** 2  # 10% faster\n"
    "Ça va très bien; Ελληνικά και кириллица, 5K (\u212a) pieces.\t\tTabbed\n"
    "中文 测试，数字１２３和123。カタカナ🙂 abc한국어텍스트 مرحبا 🙂   \n"
    '{"name": "tool_call", "arguments": {"n": 42}}   '
)


def _train(texts: list[str]) -> Any:
    """Byte-level BPE merged across everything: no pre-tokenization at training time."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[BOS, EOS],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # BPE's merge order did not join a line break to the word after it ("\ndef" encodes as
    # "\n", "de", "f" either way): one last merge that only the [\r\n] step keeps from applying.
    doc = json.loads(tok.to_str())
    doc["model"]["vocab"]["Ċde"] = len(doc["model"]["vocab"])
    doc["model"]["merges"].append(["Ċ", "de"])
    return Tokenizer.from_str(json.dumps(doc))


def _with_steps(trained: Any, steps: list[dict[str, Any]]) -> Any:
    from tokenizers import Tokenizer

    doc = json.loads(trained.to_str())
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": steps}
    seq_a, seq_b = ({"Sequence": {"id": x, "type_id": i}} for i, x in enumerate("AB"))
    doc["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, seq_a],
        "pair": [seq_a, seq_b],
        "special_tokens": {BOS: {"id": BOS, "ids": [trained.token_to_id(BOS)], "tokens": [BOS]}},
    }
    return Tokenizer.from_str(json.dumps(doc))


REFERENCE_STEPS: list[dict[str, Any]] = json.loads(DEEPSEEK_LLM_PRE_TOKENIZER_JSON)["pretokenizers"]


@pytest.fixture(scope="module")
def reference() -> Any:
    lines = [line + "\n" for line in CORPUS.splitlines()] + [TEXT] * 3
    return _with_steps(_train(lines), REFERENCE_STEPS)


@pytest.fixture(scope="module")
def converted(reference: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference written into a GGUF as llama.cpp's convert_hf_to_gguf writes a DeepSeek-V2
    vocabulary (gpt2 model, pre "deepseek-llm", tokens, types, merges, BOS added), converted."""
    root = tmp_path_factory.mktemp("deepseek-llm")
    doc = json.loads(reference.to_str())
    vocab = doc["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    path = root / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), "deepseek2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("deepseek-llm")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in (BOS, EOS) else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
    )
    writer.add_bos_token_id(vocab[BOS])
    writer.add_eos_token_id(vocab[EOS])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = root / "tok"
    out.mkdir()
    write_tokenizer(build_tokenizer(read_gguf(path)), out)
    return out


def test_deepseek_llm_gguf_encodes_like_its_tokenizer_json(reference: Any, converted: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    want = reference.encode(TEXT).ids
    assert want[0] == reference.token_to_id(BOS)
    raw = Tokenizer.from_file(str(converted / "tokenizer.json"))
    assert raw.pre_tokenizer is not None and reference.pre_tokenizer is not None
    assert raw.pre_tokenizer.pre_tokenize_str(TEXT) == reference.pre_tokenizer.pre_tokenize_str(
        TEXT
    )
    assert raw.encode(TEXT).ids == want
    # As mlx-lm loads it (transformers' fast tokenizer over the written files).
    tok = AutoTokenizer.from_pretrained(str(converted))
    assert tok.encode(TEXT) == want
    assert tok.decode(want, skip_special_tokens=True) == TEXT


@pytest.mark.parametrize("dropped", range(len(REFERENCE_STEPS) - 1))
def test_the_text_exercises_every_step(dropped: int, reference: Any) -> None:
    """The oracle can fail: without any one step (say \\p{N}+ for single digits, or no split at
    the end of the text), the fixed text encodes differently with this vocabulary."""
    from tokenizers import Tokenizer

    trained = Tokenizer.from_str(reference.to_str())
    steps = [s for i, s in enumerate(REFERENCE_STEPS) if i != dropped]
    assert _with_steps(trained, steps).encode(TEXT).ids != reference.encode(TEXT).ids
