"""Check a safetensors file's header before any library maps it.

The format: 8 bytes little-endian header length N, N bytes of JSON ({name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}), then the data. Every offset, size and dtype is
checked against the file here, with bounded reads, so a hostile file ends in a
MalformedFileError naming the file and the field (mlx's own loader raises a bare RuntimeError).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from local_ai.errors import MalformedFileError

#: The reference implementation's limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def check_safetensors(path: Path) -> dict[str, Any]:
    """The parsed header of `path` (without ``__metadata__``), or MalformedFileError."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise MalformedFileError(path, "header length", "file is shorter than 8 bytes")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise MalformedFileError(
                path, "header length", f"{length} bytes exceeds the limit of {MAX_HEADER_BYTES}"
            )
        if 8 + length > size:
            raise MalformedFileError(
                path, "header length", f"{length} bytes runs past the end of the {size}-byte file"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedFileError(path, "header", f"is not valid JSON ({exc})", offset=8) from None
    if not isinstance(header, dict):
        raise MalformedFileError(path, "header", "is not a JSON object", offset=8)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise MalformedFileError(path, "__metadata__", "must map strings to strings")
    data_size = size - 8 - length
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        spans.append((*_check_tensor(path, name, info, data_size), name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise MalformedFileError(path, f"tensor {name!r}.data_offsets", "overlaps another")
        if begin > position:
            raise MalformedFileError(
                path, f"tensor {name!r}.data_offsets", f"leaves a hole at data byte {position}"
            )
        position = end
    if position != data_size:
        raise MalformedFileError(
            path, "data", f"{data_size - position} bytes after the last tensor are not indexed"
        )
    return header


def _check_tensor(path: Path, name: str, info: Any, data_size: int) -> tuple[int, int]:
    field = f"tensor {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise MalformedFileError(path, field, "needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise MalformedFileError(path, f"{field}.dtype", f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape):
        raise MalformedFileError(path, f"{field}.shape", f"{shape!r} is not a list of sizes")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise MalformedFileError(path, f"{field}.data_offsets", f"{offsets!r} is not [begin, end]")
    begin, end = offsets
    if end > data_size:
        raise MalformedFileError(
            path, f"{field}.data_offsets", f"end {end} is past the {data_size} bytes of data"
        )
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != expected:
        raise MalformedFileError(
            path,
            f"{field}.shape",
            f"{shape} of {dtype} needs {expected} bytes, data_offsets give {end - begin}",
        )
    return begin, end
