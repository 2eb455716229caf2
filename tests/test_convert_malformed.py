"""Untrusted GGUF files: a corpus of malformed files made from a valid one, a fuzz test of the
reader, and the conversion process's memory limit.

Every malformed file must end in a MalformedFileError that names the file and the field, raised
before anything large is allocated; never another exception, a crash or a hang. Field positions
come from gguf-py's reader (an independent parser) of the valid file.
"""

from __future__ import annotations

import math
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local_ai.convert import archs
from local_ai.convert.gguf_reader import Limits, read_gguf
from local_ai.convert.gguf_to_mlx import convert_gguf
from local_ai.convert.recipe import make_recipe
from local_ai.convert.runner import run_worker
from local_ai.errors import ConversionError, MalformedFileError, NotYetError
from tests.harness import gguf_export as ge
from tests.harness import tinymodels as tm


@dataclass(frozen=True)
class Layout:
    """Byte positions in the valid file."""

    raw: bytes
    kv: dict[str, int]  # key -> offset of its value (after the type)
    kv_start: dict[str, int]  # key -> offset of the key length
    tensors: dict[str, int]  # tensor name -> offset of its n_dims
    data_offset: int

    def u32(self, at: int) -> int:
        value: int = struct.unpack_from("<I", self.raw, at)[0]
        return value


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Layout]:
    import gguf

    root = tmp_path_factory.mktemp("malformed")
    model = tm.build_model(root / "model", "qwen3")
    path = ge.export_gguf(model, root / "valid.gguf", "Q8_0")
    reader = gguf.GGUFReader(str(path))
    kv, kv_start = {}, {}
    for name, f in reader.fields.items():
        if not name.startswith("GGUF."):
            kv_start[name] = int(f.offset)
            kv[name] = int(f.offset) + 8 + len(name.encode()) + 4
    tensors = {t.name: int(t.field.offset) + 8 + len(t.name.encode()) for t in reader.tensors}
    return path, Layout(path.read_bytes(), kv, kv_start, tensors, int(reader.data_offset))


def put(data: bytearray, at: int, fmt: str, value: Any) -> bytearray:
    struct.pack_into(fmt, data, at, value)
    return data


def rename(data: bytearray, at: int, old: str, new: str) -> bytearray:
    assert len(old) == len(new)
    assert data[at : at + len(old)] == old.encode()
    data[at : at + len(new)] = new.encode()
    return data


EMBD = "token_embd.weight"  # Q8_0, dims (64, 1024), the first tensor
NORM = "blk.0.attn_norm.weight"  # F32, dims (64,)
ATTN_K = "blk.0.attn_k.weight"
Mutation = Callable[[bytearray, Layout], bytes | bytearray]


def _tensor_type_at(lay: Layout, name: str) -> int:
    n_dims = lay.u32(lay.tensors[name])
    return lay.tensors[name] + 4 + 8 * n_dims


# (id, mutation, field the error must name, words of the problem). The reader alone must reject
# these, before any tensor data is read.
READER_CASES: list[tuple[str, Mutation, str, str]] = [
    ("empty", lambda d, lay: b"", "header.magic", "too short"),
    ("wrong-magic", lambda d, lay: b"GGML" + d[4:], "header.magic", "not a GGUF file"),
    ("version-99", lambda d, lay: put(d, 4, "<I", 99), "header.version", "not supported"),
    ("big-endian", lambda d, lay: put(d, 4, ">I", 3), "header.version", "big-endian"),
    ("cut-in-header", lambda d, lay: d[:20], "header.metadata_count", "truncated"),
    ("huge-tensor-count", lambda d, lay: put(d, 8, "<Q", 1 << 62), "header.tensor_count", "limit"),
    ("huge-kv-count", lambda d, lay: put(d, 16, "<Q", 1 << 40), "header.metadata_count", "limit"),
    ("counts-past-eof", lambda d, lay: put(d, 8, "<Q", 500_000), "header", "cannot fit"),
    ("huge-key-length", lambda d, lay: put(d, 24, "<Q", 1 << 60), "metadata[0].key", "limit"),
    (
        "huge-string",
        lambda d, lay: put(d, lay.kv["general.name"], "<Q", (1 << 64) - 1),
        "metadata 'general.name'",
        "exceeds the limit",
    ),
    (
        "string-past-eof",
        lambda d, lay: put(d, lay.kv["general.name"], "<Q", 15 << 20),
        "metadata 'general.name'",
        "runs past the end",
    ),
    (
        "huge-array",
        lambda d, lay: put(d, lay.kv["tokenizer.ggml.tokens"] + 4, "<Q", 1 << 40),
        "metadata 'tokenizer.ggml.tokens' (array length)",
        "exceed the limit",
    ),
    (
        "array-past-eof",
        lambda d, lay: put(d, lay.kv["tokenizer.ggml.token_type"] + 4, "<Q", 1 << 21),
        "metadata 'tokenizer.ggml.token_type' (array length)",
        "cannot fit",
    ),
    (
        "unknown-value-type",
        lambda d, lay: put(d, lay.kv["general.name"] - 4, "<I", 99),
        "metadata 'general.name' (type)",
        "unknown value type 99",
    ),
    (
        "array-of-arrays",
        lambda d, lay: put(d, lay.kv["tokenizer.ggml.tokens"], "<I", 9),
        "metadata 'tokenizer.ggml.tokens'",
        "arrays of arrays",
    ),
    (
        "key-not-utf8",
        lambda d, lay: put(d, lay.kv_start["general.type"] + 8, "<B", 0xFF),
        "metadata[1].key",
        "UTF-8",
    ),
    (
        "duplicate-key",
        lambda d, lay: rename(d, lay.kv_start["general.name"] + 8, "general.name", "general.type"),
        "metadata 'general.type'",
        "duplicate key",
    ),
    (
        "cut-in-tokens",
        lambda d, lay: d[: lay.kv["tokenizer.ggml.tokens"] + 10_000],
        "metadata 'tokenizer.ggml.tokens'[",
        "end",
    ),
    (
        "alignment-not-power-of-two",  # general.file_type (u32 = 7) renamed to general.alignment
        lambda d, lay: rename(
            d, lay.kv_start["general.file_type"] + 8, "general.file_type", "general.alignment"
        ),
        "metadata 'general.alignment'",
        "not a power of two",
    ),
    (
        "alignment-zero",
        lambda d, lay: put(
            rename(
                d, lay.kv_start["general.file_type"] + 8, "general.file_type", "general.alignment"
            ),
            lay.kv["general.file_type"],
            "<I",
            0,
        ),
        "metadata 'general.alignment'",
        "not a power of two",
    ),
    ("zero-dims", lambda d, lay: put(d, lay.tensors[EMBD], "<I", 0), f"'{EMBD}'.n_dims", "not"),
    ("nine-dims", lambda d, lay: put(d, lay.tensors[EMBD], "<I", 9), f"'{EMBD}'.n_dims", "not"),
    ("dim-zero", lambda d, lay: put(d, lay.tensors[EMBD] + 4, "<Q", 0), f"'{EMBD}'.dims[0]", "not"),
    (
        "dim-huge",
        lambda d, lay: put(d, lay.tensors[EMBD] + 12, "<Q", 1 << 50),
        f"'{EMBD}'.dims[1]",
        "2^40",
    ),
    (
        "dims-exceed-file",
        lambda d, lay: put(d, lay.tensors[EMBD] + 12, "<Q", 1 << 30),
        f"'{EMBD}'.dims",
        "bytes of data",
    ),
    (
        "row-not-whole-blocks",
        lambda d, lay: put(d, lay.tensors[EMBD] + 4, "<Q", 48),
        f"'{EMBD}'.dims[0]",
        "block size 32",
    ),
    (
        "unknown-tensor-type",
        lambda d, lay: put(d, _tensor_type_at(lay, EMBD), "<I", 99),
        f"'{EMBD}'.type",
        "unknown tensor type 99",
    ),
    (
        "offset-unaligned",
        lambda d, lay: put(d, _tensor_type_at(lay, NORM) + 4, "<Q", 3),
        f"'{NORM}'.offset",
        "alignment 32",
    ),
    (
        "offset-past-eof",
        lambda d, lay: put(d, _tensor_type_at(lay, NORM) + 4, "<Q", 1 << 40),
        f"tensor '{NORM}'.offset",
        "past the end",
    ),
    (
        "overlapping-tensors",
        lambda d, lay: put(d, _tensor_type_at(lay, NORM) + 4, "<Q", 0),
        ".offset",
        "overlaps",
    ),
    ("truncated-data", lambda d, lay: d[:-100], ".offset", "past the end of the file"),
    (
        "duplicate-tensor",
        lambda d, lay: rename(d, lay.tensors[ATTN_K] - len(ATTN_K), ATTN_K, "blk.0.attn_q.weight"),
        "'blk.0.attn_q.weight'",
        "duplicate tensor name",
    ),
]

# Well-formed containers whose content is wrong: caught while mapping or converting.
CONVERT_CASES: list[tuple[str, Mutation, str, str]] = [
    (
        "missing-required-key",
        lambda d, lay: rename(
            d,
            lay.kv_start["qwen3.embedding_length"] + 8,
            "qwen3.embedding_length",
            "qwen3.embedding_lengtx",
        ),
        "metadata 'qwen3.embedding_length'",
        "missing",
    ),
    (
        "config-disagrees-with-tensors",
        lambda d, lay: put(d, lay.kv["qwen3.embedding_length"], "<I", 32),
        f"tensor '{EMBD}'",
        "does not match",
    ),
    (
        "kv-heads-do-not-divide",
        lambda d, lay: put(d, lay.kv["qwen3.attention.head_count_kv"], "<I", 3),
        "metadata 'qwen3.attention.head_count_kv'",
        "does not divide",
    ),
    (
        "huge-layer-count",
        lambda d, lay: put(d, lay.kv["qwen3.block_count"], "<I", 1 << 30),
        "metadata 'qwen3.block_count'",
        "outside",
    ),
    (
        "eos-out-of-vocabulary",
        lambda d, lay: put(d, lay.kv["tokenizer.ggml.eos_token_id"], "<I", 50_000),
        "metadata 'tokenizer.ggml.eos_token_id'",
        ">= vocabulary size",
    ),
    (
        "bad-merge",  # the first merge's separating space overwritten
        lambda d, lay: _break_first_merge(d, lay),
        "metadata 'tokenizer.ggml.merges'[0]",
        "two tokens",
    ),
    (
        "nan-weights",
        lambda d, lay: put(d, lay.data_offset + _norm_data(lay), "<f", math.nan),
        f"tensor '{NORM}'",
        "NaN",
    ),
]


def _break_first_merge(d: bytearray, lay: Layout) -> bytearray:
    first = lay.kv["tokenizer.ggml.merges"] + 12  # element type, count, then the first string
    length = struct.unpack_from("<Q", d, first)[0]
    text = bytes(d[first + 8 : first + 8 + length])
    d[first + 8 + text.index(b" ")] = ord("_")
    return d


def _norm_data(lay: Layout) -> int:
    relative: int = struct.unpack_from("<Q", lay.raw, _tensor_type_at(lay, NORM) + 4)[0]
    return relative


def _write(tmp_path: Path, name: str, data: bytes | bytearray) -> Path:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(bytes(data))
    return path


def _check(exc: MalformedFileError, path: Path, field: str, words: str) -> None:
    assert exc.path == path
    assert field in exc.field, (exc.field, field)
    assert words in exc.problem, (exc.problem, words)
    assert str(path) in str(exc) and exc.field in str(exc)


def test_corpus_is_large_enough() -> None:
    assert len(READER_CASES) + len(CONVERT_CASES) >= 15
    names = [c[0] for c in READER_CASES + CONVERT_CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "mutate", "field", "words"), [pytest.param(*c, id=c[0]) for c in READER_CASES]
)
def test_reader_rejects(
    name: str, mutate: Mutation, field: str, words: str, valid: tuple[Path, Layout], tmp_path: Path
) -> None:
    _, lay = valid
    path = _write(tmp_path, name, mutate(bytearray(lay.raw), lay))
    started = time.monotonic()
    with pytest.raises(MalformedFileError) as info:
        read_gguf(path)
    assert time.monotonic() - started < 2
    _check(info.value, path, field, words)


@pytest.mark.parametrize(
    ("name", "mutate", "field", "words"), [pytest.param(*c, id=c[0]) for c in CONVERT_CASES]
)
def test_converter_rejects(
    name: str, mutate: Mutation, field: str, words: str, valid: tuple[Path, Layout], tmp_path: Path
) -> None:
    _, lay = valid
    path = _write(tmp_path, name, mutate(bytearray(lay.raw), lay))
    read_gguf(path)  # a well-formed container
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MalformedFileError) as info:
        convert_gguf(path, out, make_recipe("q4"))
    _check(info.value, path, field, words)


def test_valid_file_converts(valid: tuple[Path, Layout], tmp_path: Path) -> None:
    """The corpus's base file is fine: every error above comes from its mutation."""
    convert_gguf(valid[0], tmp_path, make_recipe("q4"))
    assert (tmp_path / "model.safetensors").is_file()


def test_errors_cross_the_process_boundary(valid: tuple[Path, Layout], tmp_path: Path) -> None:
    """In the worker process, the same error comes back with its file, field and offset."""
    _, lay = valid
    path = _write(tmp_path, "bad", put(bytearray(lay.raw), 16, "<Q", 1 << 40))
    with pytest.raises(MalformedFileError) as info:
        run_worker({"op": "inspect", "kind": "gguf", "source": str(path)})
    _check(info.value, path, "header.metadata_count", "limit")
    assert info.value.offset == 16


# ------------------------------------------------------------------------------------- fuzz

FUZZ_SECONDS = 10.0
_INTERESTING = (0, 1, 2, 3, 31, 32, 255, 1 << 31, (1 << 32) - 1, 1 << 40, (1 << 63) - 1)


@pytest.fixture(scope="module")
def fuzz_budget() -> dict[str, float]:
    return {"deadline": time.monotonic() + FUZZ_SECONDS}


# derandomize: the same examples every run (a load-shortened run tries a prefix of them), so a
# red CI is a regression, never a new input met by chance (drop it to search for new ones).
@settings(
    max_examples=3000,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["byte", "u32", "u64", "cut"]),
            st.integers(min_value=0, max_value=1 << 20),
            st.one_of(st.sampled_from(_INTERESTING), st.integers(0, (1 << 64) - 1)),
        ),
        min_size=1,
        max_size=4,
    ),
    header_bias=st.booleans(),
)
def test_fuzz_reader(
    edits: list[tuple[str, int, int]],
    header_bias: bool,
    valid: tuple[Path, Layout],
    fuzz_budget: dict[str, float],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Random edits (biased towards the header, where every count and offset lives) never get
    anything but MalformedFileError out of the reader, and a file it accepts is mapped or
    rejected with a typed error. Bounded by FUZZ_SECONDS of wall time."""
    if time.monotonic() > fuzz_budget["deadline"]:
        return
    _, lay = valid
    data = bytearray(lay.raw)
    span = lay.data_offset if header_bias else len(data)
    for kind, where, value in edits:
        at = where % max(1, span)
        if kind == "cut":
            del data[at:]
        elif kind == "byte":
            if at < len(data):
                data[at] = value & 0xFF
        else:
            size = 4 if kind == "u32" else 8
            if at + size <= len(data):
                struct.pack_into(
                    "<I" if size == 4 else "<Q", data, at, value & ((1 << 8 * size) - 1)
                )
    path = tmp_path_factory.getbasetemp() / "fuzz.gguf"
    path.write_bytes(bytes(data))
    try:
        parsed = read_gguf(path, Limits())
    except MalformedFileError as exc:
        assert exc.path == path and exc.field
        return
    try:
        config = archs.hf_config(parsed)
        archs.tensor_plan(parsed, config)
    except (MalformedFileError, NotYetError):
        pass


# ------------------------------------------------------------------------------ memory limit


def test_memory_limit_stops_the_worker_not_the_caller(tmp_path: Path) -> None:
    """A conversion that needs more than its limit ends in a clean ConversionError; only the
    worker process dies."""
    model = tm.build_model(
        tmp_path / "m", "qwen3", hidden_size=256, num_heads=4, num_layers=1, vocab_size=65536
    )
    source = ge.export_gguf(model, tmp_path / "big-vocab.gguf", "F16")
    shutil.rmtree(model)
    out = tmp_path / "out"
    out.mkdir()
    request = {
        "op": "convert",
        "kind": "gguf",
        "source": str(source),
        "out_dir": str(out),
        "recipe": make_recipe("q4").to_json(),
    }
    with pytest.raises(ConversionError) as info:
        run_worker(request, memory_limit=320 << 20)
    assert "memory" in str(info.value) and "--memory-limit" in (info.value.hint or "")
