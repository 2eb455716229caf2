"""A defensive GGUF reader: every count, length, dimension and offset is checked against the file
and against fixed limits before anything is allocated.

GGUF files come from the internet. A malformed or hostile file must end in a
:class:`~local_ai.errors.MalformedFileError` naming the file and the field, never in a crash, a
huge allocation or a hang. Pure standard library (no numpy, no mmap: a mapping of a multi-GB file
would count against the converter's address-space limit); tensor data is read row range by row
range with ``readinto``.

Layout (little-endian): magic ``GGUF``, version (u32, 2 or 3), tensor count (u64), metadata count
(u64), metadata key/values, tensor infos (name, n_dims, dims, type, offset), padding to
``general.alignment`` (default 32), tensor data.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from local_ai.errors import MalformedFileError
from local_ai.sizing import GGML_TYPES, GGMLType

MAGIC: Final = b"GGUF"
SUPPORTED_VERSIONS: Final = (2, 3)
DEFAULT_ALIGNMENT: Final = 32
MAX_DIMS: Final = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class Limits:
    """Ceilings well above any real model, far below what would exhaust memory."""

    max_tensors: int = 1 << 20
    max_kv: int = 1 << 16
    max_key_bytes: int = 1 << 16
    max_string_bytes: int = 16 << 20  # one metadata string (chat templates are ~10-100 KB)
    max_name_bytes: int = 256  # tensor names (llama.cpp itself stops at 63)
    max_array_len: int = 1 << 22  # tokens/merges of the largest vocabularies are ~0.3-1M
    max_total_elements: int = 1 << 23  # all metadata array elements together
    max_alignment: int = 1 << 20
    max_dim: int = 1 << 40


DEFAULT_LIMITS: Final = Limits()


# Metadata value types.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = (
    range(13)
)
_SCALARS: Final[dict[int, tuple[str, str]]] = {
    UINT8: ("<B", "uint8"),
    INT8: ("<b", "int8"),
    UINT16: ("<H", "uint16"),
    INT16: ("<h", "int16"),
    UINT32: ("<I", "uint32"),
    INT32: ("<i", "int32"),
    FLOAT32: ("<f", "float32"),
    BOOL: ("<B", "bool"),
    UINT64: ("<Q", "uint64"),
    INT64: ("<q", "int64"),
    FLOAT64: ("<d", "float64"),
}
INTEGER_TYPES: Final = frozenset({UINT8, INT8, UINT16, INT16, UINT32, INT32, UINT64, INT64})
FLOAT_TYPES: Final = frozenset({FLOAT32, FLOAT64})
TYPE_NAMES: Final[dict[int, str]] = {
    **{k: v[1] for k, v in _SCALARS.items()},
    STRING: "string",
    ARRAY: "array",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: dims[0] is the row length (innermost)
    type: GGMLType
    offset: int  # absolute position in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy (row-major) order: the reverse of ``dims``."""
        return tuple(reversed(self.dims))

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def outer_rows(self) -> int:
        """Length of the first numpy axis; tensor data is a sequence of that many equal slices."""
        return self.shape[0]

    @property
    def bytes_per_outer_row(self) -> int:
        return self.nbytes // self.outer_rows


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF header. Metadata values are Python values (int, float, bool, str, list)."""

    path: Path
    version: int
    file_size: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    value_types: dict[str, tuple[int, int | None]]  # key -> (type, element type for arrays)
    tensors: tuple[TensorInfo, ...]
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({t.name: t for t in self.tensors})

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)

    @property
    def architecture(self) -> str:
        return self.get_str("general.architecture")

    # Typed access: a wrong type or a missing required key names the key.

    def _error(self, key: str, problem: str) -> MalformedFileError:
        return MalformedFileError(self.path, f"metadata {key!r}", problem)

    def _type_name(self, key: str) -> str:
        kind, elem = self.value_types[key]
        if kind == ARRAY:
            return f"array of {TYPE_NAMES.get(elem or 0, '?')}"
        return TYPE_NAMES[kind]

    def has(self, key: str) -> bool:
        return key in self.metadata

    def get_int(
        self, key: str, default: int | None = None, *, minimum: int = 0, maximum: int = 1 << 62
    ) -> int:
        if key not in self.metadata:
            if default is None:
                raise self._error(key, "required key is missing")
            return default
        if self.value_types[key][0] not in INTEGER_TYPES:
            raise self._error(key, f"expected an integer, got {self._type_name(key)}")
        value = int(self.metadata[key])
        if not minimum <= value <= maximum:
            raise self._error(key, f"{value} is outside [{minimum}, {maximum}]")
        return value

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.metadata:
            if default is None:
                raise self._error(key, "required key is missing")
            return default
        if self.value_types[key][0] not in FLOAT_TYPES | INTEGER_TYPES:
            raise self._error(key, f"expected a number, got {self._type_name(key)}")
        value = float(self.metadata[key])
        if value != value or value in (float("inf"), float("-inf")):
            raise self._error(key, f"{value} is not a finite number")
        return value

    def get_bool(self, key: str, default: bool | None = None) -> bool:
        if key not in self.metadata:
            if default is None:
                raise self._error(key, "required key is missing")
            return default
        if self.value_types[key][0] != BOOL:
            raise self._error(key, f"expected a bool, got {self._type_name(key)}")
        return bool(self.metadata[key])

    def get_str(self, key: str, default: str | None = None) -> str:
        if key not in self.metadata:
            if default is None:
                raise self._error(key, "required key is missing")
            return default
        if self.value_types[key][0] != STRING:
            raise self._error(key, f"expected a string, got {self._type_name(key)}")
        return str(self.metadata[key])

    def get_array(self, key: str, element_types: frozenset[int]) -> list[Any] | None:
        """An array whose elements have one of ``element_types``, or None when absent."""
        if key not in self.metadata:
            return None
        kind, elem = self.value_types[key]
        if kind != ARRAY or elem not in element_types:
            wanted = "/".join(sorted(TYPE_NAMES[t] for t in element_types))
            raise self._error(key, f"expected an array of {wanted}, got {self._type_name(key)}")
        value: list[Any] = self.metadata[key]
        return value


class _Cursor:
    """Sequential bounded reads; every read names the field it is for."""

    def __init__(self, handle: IO[bytes], path: Path, size: int) -> None:
        self.handle = handle
        self.path = path
        self.size = size
        self.pos = 0

    def fail(self, field_name: str, problem: str, offset: int | None = None) -> MalformedFileError:
        return MalformedFileError(
            self.path, field_name, problem, offset=self.pos if offset is None else offset
        )

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int, field_name: str) -> bytes:
        if n > self.remaining():
            raise self.fail(
                field_name,
                f"needs {n} bytes but the file ends after {self.remaining()} (truncated?)",
            )
        data = self.handle.read(n)
        if len(data) != n:  # the file shrank while being read
            raise self.fail(field_name, "unexpected end of file")
        self.pos += n
        return data

    def scalar(self, fmt: str, field_name: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), field_name))[0]

    def u32(self, field_name: str) -> int:
        value: int = self.scalar("<I", field_name)
        return value

    def u64(self, field_name: str) -> int:
        value: int = self.scalar("<Q", field_name)
        return value

    def string(self, field_name: str, max_bytes: int) -> str:
        start = self.pos
        length = self.u64(f"{field_name} (length)")
        if length > max_bytes:
            raise self.fail(
                field_name, f"string length {length} exceeds the limit of {max_bytes}", start
            )
        if length > self.remaining():
            raise self.fail(
                field_name,
                f"string length {length} runs past the end of the file "
                f"({self.remaining()} bytes left)",
                start,
            )
        raw = self.take(length, field_name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(field_name, f"is not valid UTF-8 ({exc.reason})", start) from None


# Smallest encoded sizes, used to reject counts the rest of the file cannot hold.
_MIN_KV_BYTES: Final = 8 + 1 + 4 + 1  # key length + 1-byte key + type + u8 value
_MIN_TENSOR_INFO_BYTES: Final = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_ELEMENT_MIN_BYTES: Final = {**{k: struct.calcsize(v[0]) for k, v in _SCALARS.items()}, STRING: 8}


def read_gguf(path: str | Path, limits: Limits = DEFAULT_LIMITS) -> GGUFFile:
    """Parse and validate the header, metadata and tensor infos of a GGUF file.

    Raises :class:`MalformedFileError` for anything inconsistent; tensor data is not read.
    """
    path = Path(path)
    try:
        handle = path.open("rb", buffering=1 << 20)
    except IsADirectoryError:
        raise MalformedFileError(path, "file", "is a directory, not a GGUF file") from None
    with handle:
        size = path.stat().st_size
        return _parse(_Cursor(handle, path, size), limits)


def _parse(cur: _Cursor, limits: Limits) -> GGUFFile:
    magic = cur.take(4, "header.magic") if cur.remaining() >= 4 else b""
    if magic != MAGIC:
        if cur.size < 4:
            raise cur.fail("header.magic", f"file is {cur.size} bytes, too short for GGUF", 0)
        raise cur.fail("header.magic", f"expected b'GGUF', found {magic!r}: not a GGUF file", 0)
    version = cur.u32("header.version")
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        if swapped in SUPPORTED_VERSIONS:
            raise cur.fail("header.version", "big-endian GGUF files are not supported", 4)
        raise cur.fail(
            "header.version",
            f"version {version} is not supported (expected 2 or 3)",
            4,
        )
    n_tensors = cur.u64("header.tensor_count")
    n_kv = cur.u64("header.metadata_count")
    if n_tensors > limits.max_tensors:
        raise cur.fail(
            "header.tensor_count", f"{n_tensors} exceeds the limit of {limits.max_tensors}", 8
        )
    if n_kv > limits.max_kv:
        raise cur.fail("header.metadata_count", f"{n_kv} exceeds the limit of {limits.max_kv}", 16)
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > cur.remaining():
        raise cur.fail(
            "header",
            f"{n_kv} metadata entries and {n_tensors} tensors cannot fit in the "
            f"{cur.remaining()} bytes that follow (truncated or corrupt counts)",
            8,
        )

    metadata: dict[str, Any] = {}
    types: dict[str, tuple[int, int | None]] = {}
    budget = [limits.max_total_elements]
    for index in range(n_kv):
        key_start = cur.pos
        key = cur.string(f"metadata[{index}].key", limits.max_key_bytes)
        if not key:
            raise cur.fail(f"metadata[{index}].key", "empty key", key_start)
        if key in metadata:
            raise cur.fail(f"metadata {key!r}", "duplicate key", key_start)
        field_name = f"metadata {key!r}"
        kind = cur.u32(f"{field_name} (type)")
        value, elem = _read_value(cur, kind, field_name, limits, budget)
        metadata[key] = value
        types[key] = (kind, elem)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        if types["general.alignment"][0] != UINT32:
            raise cur.fail("metadata 'general.alignment'", "must be a uint32", None)
        alignment = int(metadata["general.alignment"])
        if alignment < 1 or alignment & (alignment - 1) or alignment > limits.max_alignment:
            raise cur.fail(
                "metadata 'general.alignment'",
                f"{alignment} is not a power of two between 1 and {limits.max_alignment}",
            )

    raw_infos: list[tuple[str, tuple[int, ...], GGMLType, int, int]] = []
    seen: set[str] = set()
    for index in range(n_tensors):
        start = cur.pos
        name = cur.string(f"tensor_info[{index}].name", limits.max_name_bytes)
        where = f"tensor_info[{index}] {name!r}"
        if not name:
            raise cur.fail(f"tensor_info[{index}].name", "empty tensor name", start)
        if name in seen:
            raise cur.fail(where, "duplicate tensor name", start)
        seen.add(name)
        n_dims = cur.u32(f"{where}.n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"{where}.n_dims", f"{n_dims} is not between 1 and {MAX_DIMS}")
        dims = tuple(cur.u64(f"{where}.dims[{d}]") for d in range(n_dims))
        for d, value in enumerate(dims):
            if not 1 <= value <= limits.max_dim:
                raise cur.fail(f"{where}.dims[{d}]", f"{value} is not between 1 and 2^40")
        type_id = cur.u32(f"{where}.type")
        gtype = GGML_TYPES.get(type_id)
        if gtype is None:
            raise cur.fail(f"{where}.type", f"unknown tensor type {type_id}")
        if dims[0] % gtype.block_size:
            raise cur.fail(
                f"{where}.dims[0]",
                f"row length {dims[0]} is not a multiple of {gtype.name}'s block size "
                f"{gtype.block_size}",
            )
        n_elements = 1
        for value in dims:
            n_elements *= value
        nbytes = n_elements // gtype.block_size * gtype.type_size
        offset = cur.u64(f"{where}.offset")
        if offset % alignment:
            raise cur.fail(
                f"{where}.offset", f"{offset} is not a multiple of alignment {alignment}"
            )
        if nbytes > cur.size:  # cheap early check; the exact one follows once data_offset is known
            raise cur.fail(
                f"{where}.dims", f"declares {nbytes} bytes of data in a {cur.size}-byte file"
            )
        raw_infos.append((name, dims, gtype, offset, nbytes))

    data_offset = _align(cur.pos, alignment)
    tensors: list[TensorInfo] = []
    for name, dims, gtype, offset, nbytes in raw_infos:
        start = data_offset + offset
        if start + nbytes > cur.size:
            raise MalformedFileError(
                cur.path,
                f"tensor {name!r}.offset",
                f"data [{start}, {start + nbytes}) runs past the end of the file "
                f"({cur.size} bytes)",
            )
        tensors.append(TensorInfo(name, dims, gtype, start, nbytes))
    by_offset = sorted(tensors, key=lambda t: t.offset)
    for prev, nxt in itertools.pairwise(by_offset):
        if nxt.offset < prev.offset + prev.nbytes:
            raise MalformedFileError(
                cur.path,
                f"tensor {nxt.name!r}.offset",
                f"data overlaps tensor {prev.name!r}",
            )
    return GGUFFile(
        path=cur.path,
        version=version,
        file_size=cur.size,
        alignment=alignment,
        data_offset=data_offset,
        metadata=metadata,
        value_types=types,
        tensors=tuple(tensors),
    )


def _align(pos: int, alignment: int) -> int:
    return (pos + alignment - 1) // alignment * alignment


def _read_value(
    cur: _Cursor, kind: int, field_name: str, limits: Limits, budget: list[int]
) -> tuple[Any, int | None]:
    if kind in _SCALARS:
        fmt = _SCALARS[kind][0]
        value = cur.scalar(fmt, field_name)
        if kind == FLOAT32:
            value = shortest_float32(value)
        return (bool(value) if kind == BOOL else value), None
    if kind == STRING:
        return cur.string(field_name, limits.max_string_bytes), None
    if kind != ARRAY:
        raise cur.fail(f"{field_name} (type)", f"unknown value type {kind}", cur.pos - 4)
    elem = cur.u32(f"{field_name} (array element type)")
    start = cur.pos
    count = cur.u64(f"{field_name} (array length)")
    if elem == ARRAY:
        raise cur.fail(field_name, "arrays of arrays are not supported", start - 4)
    if elem not in _ELEMENT_MIN_BYTES:
        raise cur.fail(
            f"{field_name} (array element type)", f"unknown value type {elem}", start - 4
        )
    if count > limits.max_array_len:
        raise cur.fail(
            f"{field_name} (array length)",
            f"{count} elements exceed the limit of {limits.max_array_len}",
            start,
        )
    if count * _ELEMENT_MIN_BYTES[elem] > cur.remaining():
        raise cur.fail(
            f"{field_name} (array length)",
            f"{count} elements cannot fit in the {cur.remaining()} bytes left",
            start,
        )
    budget[0] -= count
    if budget[0] < 0:
        raise cur.fail(
            field_name,
            f"metadata arrays hold more than {limits.max_total_elements} elements in total",
            start,
        )
    if elem == STRING:
        return [
            cur.string(f"{field_name}[{i}]", limits.max_string_bytes) for i in range(count)
        ], elem
    fmt = _SCALARS[elem][0]
    width = struct.calcsize(fmt)
    raw = cur.take(width * count, field_name)
    values = [v for (v,) in struct.iter_unpack(fmt, raw)] if count else []
    if elem == BOOL:
        values = [bool(v) for v in values]
    return values, elem


def shortest_float32(value: float) -> float:
    """The shortest decimal that rounds to the same float32 (1e-06, not 9.99999997e-07), so
    configs carry the number the model's authors wrote."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def read_rows(
    handle: io.RawIOBase | io.BufferedIOBase, info: TensorInfo, start: int, count: int, out: Any
) -> None:
    """Read ``count`` outer rows of ``info`` starting at row ``start`` into the writable buffer
    ``out`` (e.g. a numpy uint8 array of ``count * info.bytes_per_outer_row`` bytes)."""
    if start < 0 or count < 0 or start + count > info.outer_rows:
        raise ValueError(f"rows [{start}, {start + count}) outside {info.name} {info.shape}")
    row_bytes = info.bytes_per_outer_row
    view = memoryview(out).cast("B")
    if len(view) != count * row_bytes:
        raise ValueError("output buffer has the wrong size")
    handle.seek(info.offset + start * row_bytes)
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            raise MalformedFileError(
                Path(getattr(handle, "name", "?")),
                f"tensor {info.name!r} data",
                "unexpected end of file (did the file change during conversion?)",
                offset=info.offset + start * row_bytes + done,
            )
        done += n


def row_chunks(info: TensorInfo, max_bytes: int, multiple: int = 1) -> Iterator[tuple[int, int]]:
    """(start, count) ranges of outer rows, each at most ``max_bytes`` of source data (at least
    ``multiple`` rows, and always a multiple of it)."""
    per_row = max(1, info.bytes_per_outer_row)
    step = max(multiple, (max_bytes // per_row) // multiple * multiple)
    for start in range(0, info.outer_rows, step):
        yield start, min(step, info.outer_rows - start)


def type_histogram(tensors: Sequence[TensorInfo]) -> dict[str, int]:
    """Bytes of tensor data per storage type, largest first."""
    totals: dict[str, int] = {}
    for t in tensors:
        totals[t.type.name] = totals.get(t.type.name, 0) + t.nbytes
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
