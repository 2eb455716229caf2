"""SentencePiece GGUF tokenizers (``tokenizer.ggml.model = "llama"``: Llama 2, Mistral …).

The oracle is the ``sentencepiece`` library itself: a small BPE model with byte fallback is
trained offline on the harness corpus (identity normalisation, dummy prefix, split digits, as
Llama's tokenizer.model), written into a GGUF the way llama.cpp's ``_set_vocab_sentencepiece``
does (pieces, scores, token types; no merges), converted by local-ai, loaded with transformers,
and every text must encode to the ids sentencepiece gives, with llama.cpp's handling of special
tokens: the text between them is encoded piece by piece, each with the space prefix.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import gguf
import pytest

from local_ai.convert.gguf_reader import read_gguf
from local_ai.convert.tokenizer import build_tokenizer, write_tokenizer
from tests.harness.tinymodels import CORPUS

CONTROL = ("[INST]", "[/INST]")
USER_DEFINED = ("<tool>",)
TEXTS = (
    "Hello world! The server loads a model once and streams tokens.",
    "Ça va très bien, merci. Die Straße ist naß. Smörgåsbord.",
    "日本語のテキスト 🙂 and Ω≈√ need byte fallback",
    "   three leading spaces,  two inside and one trailing ",
    "tabs\tand\nnewlines\n\nare bytes",
    "digits 1234567 split one by one: 3.14159",
    "[INST] What is 2+2?[/INST] It is 4.</s>",
    'call <tool>{"name": "f"}<tool> done',
    "",
)


@pytest.fixture(scope="module")
def sentencepiece_model() -> Any:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in CORPUS.splitlines() if line.strip()]),
        model_writer=buf,
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        control_symbols=list(CONTROL),
        user_defined_symbols=list(USER_DEFINED),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def _token_type(sp: Any, i: int) -> int:
    """llama.cpp's _create_vocab_sentencepiece, with user-defined symbols as an HF repo's
    added_tokens_decoder marks them."""
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    if sp.id_to_piece(i) in USER_DEFINED:
        return gguf.TokenType.USER_DEFINED
    return gguf.TokenType.NORMAL


@pytest.fixture(scope="module")
def converted(sentencepiece_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sp = sentencepiece_model
    root = tmp_path_factory.mktemp("spm")
    path = root / "spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    n = sp.get_piece_size()
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types([_token_type(sp, i) for i in range(n)])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    files = build_tokenizer(read_gguf(path))
    out = root / "tok"
    out.mkdir()
    write_tokenizer(files, out)
    return out


def llama_cpp_ids(sp: Any, text: str) -> list[int]:
    """BOS, then the text split at control and user-defined tokens; every piece between them
    encoded by sentencepiece (which adds the space prefix to each, as llama.cpp does)."""
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    specials = {t: i for t, i in specials.items() if t in CONTROL + USER_DEFINED + ("</s>",)}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))
    ids = [sp.bos_id()]
    pos = 0
    for match in pattern.finditer(text):
        if match.start() > pos:
            ids += sp.encode(text[pos : match.start()])
        ids.append(specials[match.group()])
        pos = match.end()
    if pos < len(text):
        ids += sp.encode(text[pos:])
    return ids


def test_oracle_is_what_llama_does(sentencepiece_model: Any) -> None:
    """The expectations themselves: byte fallback, the ▁ prefix (again after a special token),
    whole special tokens."""
    sp = sentencepiece_model
    pieces = [sp.id_to_piece(i) for i in llama_cpp_ids(sp, "Ω\t[INST]x")]
    # Ω is CE A9 in UTF-8 and not in the vocabulary; nor is the tab
    assert pieces == ["<s>", "▁", "<0xCE>", "<0xA9>", "<0x09>", "[INST]", "▁", "x"]


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_gguf_encodes_like_sentencepiece(
    text: str, sentencepiece_model: Any, converted: Path
) -> None:
    from transformers import AutoTokenizer

    sp = sentencepiece_model
    tok = AutoTokenizer.from_pretrained(str(converted))
    want = llama_cpp_ids(sp, text)
    got = tok.encode(text)
    assert [tok.convert_ids_to_tokens(i) for i in got] == [sp.id_to_piece(i) for i in want]
    assert got == want
    if not any(t in text for t in CONTROL + USER_DEFINED + ("</s>",)):
        assert tok.decode(got, skip_special_tokens=True) == sp.decode(want[1:]) == text
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")


def test_mlx_lm_streams_it_with_its_sentencepiece_detokenizer(
    sentencepiece_model: Any, converted: Path
) -> None:
    """mlx-lm picks its linear-time SentencePiece detokenizer only for the decoder steps in
    HF's order (transformers' GGUF converter lists them differently, which left the naive one
    that re-decodes the whole line at every token)."""
    from mlx_lm.tokenizer_utils import SPMStreamingDetokenizer, load

    sp = sentencepiece_model
    wrapper = load(converted)
    detok = wrapper.detokenizer
    assert isinstance(detok, SPMStreamingDetokenizer)
    text = TEXTS[2] + " " + TEXTS[3]
    detok.reset()
    for tid in sp.encode(text):
        detok.add_token(tid)
    detok.finalize()
    assert detok.text == sp.decode(sp.encode(text)) == text
