"""GGUF -> MLX conversion throughput and peak memory against `cp` of the same file, in one run.

    uv run python -m benchmarks convert                 # ~2 GB synthetic GGUF, q4 target
    uv run python -m benchmarks convert --size-gb 4 --level bf16

Writes a synthetic qwen3-architecture GGUF of a few big F16 tensors (hidden 4096, FFN 12288,
vocab 32768, as many layers as --size-gb allows; values are a cycled pool of N(0, 0.02) halves),
then, in this order and on the same file (in the page cache after writing):

1. `cp` of the file (wall time -> GB/s);
2. sha256 of the file (what `models convert` does first for a local file: the digest);
3. the conversion through `local_ai.convert.api.convert_to_dir`: worker process, streaming
   dequantize/quantize, shards written in place (wall time -> GB/s of GGUF input, and the worker's
   own time without its imports);
4. peak resident memory of the conversion worker (ru_maxrss of waited children: the worker is the
   largest; `cp` is small) against the file size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 4096, 32, 8, 128, 12288, 32768
_POOL = 1 << 25  # fp16 values in the random pool (64 MB)


def _str(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: str, value: Any) -> bytes:
    out = _str(key)
    if kind == "u32":
        return out + struct.pack("<II", 4, value)
    if kind == "f32":
        return out + struct.pack("<If", 6, value)
    if kind == "bool":
        return out + struct.pack("<IB", 7, value)
    if kind == "str":
        return out + struct.pack("<I", 8) + _str(value)
    if kind == "strs":
        return out + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_str(v) for v in value)
    if kind == "i32s":
        return out + struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
    raise ValueError(kind)


def _tensors(layers: int) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, numpy shape, GGML type: 0 F32, 1 F16) in llama.cpp's order."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    out: list[tuple[str, tuple[int, ...], int]] = [("token_embd.weight", (VOCAB, HIDDEN), 1)]
    for i in range(layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (HIDDEN,), 0),
            (b + "attn_q.weight", (q, HIDDEN), 1),
            (b + "attn_k.weight", (kv, HIDDEN), 1),
            (b + "attn_v.weight", (kv, HIDDEN), 1),
            (b + "attn_output.weight", (HIDDEN, q), 1),
            (b + "attn_q_norm.weight", (HEAD_DIM,), 0),
            (b + "attn_k_norm.weight", (HEAD_DIM,), 0),
            (b + "ffn_norm.weight", (HIDDEN,), 0),
            (b + "ffn_gate.weight", (FFN, HIDDEN), 1),
            (b + "ffn_up.weight", (FFN, HIDDEN), 1),
            (b + "ffn_down.weight", (HIDDEN, FFN), 1),
        ]
    return [*out, ("output_norm.weight", (HIDDEN,), 0)]


def _nbytes(shape: tuple[int, ...], kind: int) -> int:
    return int(np.prod(shape)) * (4 if kind == 0 else 2)


def layers_for(size_gb: float) -> int:
    per_layer = sum(_nbytes(s, k) for n, s, k in _tensors(1) if n.startswith("blk."))
    return max(1, round((size_gb * 1e9 - _nbytes((VOCAB, HIDDEN), 1)) / per_layer))


def write_synthetic_gguf(path: Path, layers: int) -> int:
    """Stream a qwen3 GGUF to ``path``; returns its size. Metadata is complete enough for the
    converter (config, byte-level BPE tokenizer from the test harness, chat template)."""
    from tests.harness import gguf_export as ge
    from tests.harness import tinymodels as tm

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = tm.build_tokenizer(Path(tmp), "qwen3")
        (tok_dir / "config.json").write_text(json.dumps(tm.model_config("qwen3")))
        tok = ge.tokenizer_metadata(tok_dir, VOCAB)
    a = "qwen3"
    kvs = [
        _kv("general.architecture", "str", a),
        _kv("general.name", "str", f"synthetic-{layers}L"),
        _kv(f"{a}.context_length", "u32", 32768),
        _kv(f"{a}.embedding_length", "u32", HIDDEN),
        _kv(f"{a}.block_count", "u32", layers),
        _kv(f"{a}.feed_forward_length", "u32", FFN),
        _kv(f"{a}.attention.head_count", "u32", HEADS),
        _kv(f"{a}.attention.head_count_kv", "u32", KV_HEADS),
        _kv(f"{a}.attention.key_length", "u32", HEAD_DIM),
        _kv(f"{a}.attention.value_length", "u32", HEAD_DIM),
        _kv(f"{a}.rope.freq_base", "f32", 1e6),
        _kv(f"{a}.attention.layer_norm_rms_epsilon", "f32", 1e-6),
        _kv("general.file_type", "u32", 1),
        _kv("tokenizer.ggml.model", "str", "gpt2"),
        _kv("tokenizer.ggml.pre", "str", tok["pre"]),
        _kv("tokenizer.ggml.tokens", "strs", tok["tokens"]),
        _kv("tokenizer.ggml.token_type", "i32s", [int(t) for t in tok["token_type"]]),
        _kv("tokenizer.ggml.merges", "strs", tok["merges"]),
        _kv("tokenizer.ggml.eos_token_id", "u32", tok["eos_token_id"]),
        _kv("tokenizer.chat_template", "str", tok["chat_template"]),
    ]
    tensors = _tensors(layers)
    infos, offset = [], 0
    for name, shape, kind in tensors:
        dims = tuple(reversed(shape))
        infos.append(
            _str(name)
            + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
            + struct.pack("<IQ", kind, offset)
        )
        offset += -(-_nbytes(shape, kind) // 32) * 32
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    head = header + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % 32)
    pool = (np.random.default_rng(0).standard_normal(_POOL) * 0.02).astype(np.float16)
    with path.open("wb") as out:
        out.write(head)
        cursor = 0
        for _name, shape, kind in tensors:
            if kind == 0:
                out.write(np.ones(shape, dtype=np.float32).tobytes())
            else:
                cursor = _write_pool(out, pool, int(np.prod(shape)), cursor)
            out.write(b"\0" * (-_nbytes(shape, kind) % 32))
    return path.stat().st_size


def _write_pool(out: BinaryIO, pool: np.ndarray, count: int, cursor: int) -> int:
    while count:
        n = min(count, len(pool) - cursor)
        out.write(pool[cursor : cursor + n].tobytes())
        cursor = (cursor + n) % len(pool)
        count -= n
    return cursor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks convert", description=__doc__)
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the synthetic GGUF")
    parser.add_argument("--level", default="q4", help="target level (default q4)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/)")
    args = parser.parse_args(argv)

    from local_ai.convert import api
    from local_ai.convert.recipe import make_recipe

    recipe = make_recipe(args.level)
    with tempfile.TemporaryDirectory(prefix="local-ai-convert-", dir=args.dir) as tmp:
        work = Path(tmp)
        source = work / "synthetic-F16.gguf"
        layers = layers_for(args.size_gb)
        started = time.perf_counter()
        size = write_synthetic_gguf(source, layers)
        generate_s = time.perf_counter() - started
        print(f"wrote {source} ({size / 1e9:.2f} GB, {layers} layers)", file=sys.stderr)

        started = time.perf_counter()
        subprocess.run(["cp", str(source), str(work / "copy.gguf")], check=True)
        cp_s = time.perf_counter() - started
        (work / "copy.gguf").unlink()

        started = time.perf_counter()
        src = api.local_source(source, hash_files=True)
        hash_s = time.perf_counter() - started

        out = work / "mlx"
        started = time.perf_counter()
        result = api.convert_to_dir(src, recipe, out, at=api.weights_at(src))
        convert_s = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        if sys.platform == "darwin":
            peak //= 1024  # bytes there
        written = sum(p.stat().st_size for p in out.glob("model*.safetensors"))
        shutil.rmtree(out)

    report = {
        **report_header("convert_throughput"),
        "source": {"bytes": size, "layers": layers, "type": "F16", "generate_s": generate_s},
        "level": recipe.level,
        "cp": {"seconds": cp_s, "gb_s": size / cp_s / 1e9},
        "sha256": {"seconds": hash_s, "gb_s": size / hash_s / 1e9},
        "convert": {
            "seconds": convert_s,
            "gb_s": size / convert_s / 1e9,
            "worker_seconds": result.details.get("seconds"),
            "worker_gb_s": size / float(result.details["seconds"]) / 1e9,
            "bytes_written": written,
            "vs_cp": cp_s / convert_s,
        },
        "peak_rss_bytes": peak,
        "peak_rss_over_file": peak / size,
    }
    path = write_report(report, args.out)
    c = report["convert"]
    print(f"source        {size / 1e9:8.2f} GB F16 ({layers} layers) -> {recipe.level}")
    print(f"cp            {cp_s:8.2f} s  {report['cp']['gb_s']:6.2f} GB/s")
    print(f"sha256        {hash_s:8.2f} s  {report['sha256']['gb_s']:6.2f} GB/s")
    print(
        f"convert       {convert_s:8.2f} s  {c['gb_s']:6.2f} GB/s "
        f"(worker without imports {c['worker_seconds']:.2f} s, {c['worker_gb_s']:.2f} GB/s; "
        f"{c['vs_cp']:.2f}x cp)"
    )
    print(f"peak RSS      {peak / 1e9:8.2f} GB ({peak / size:.2f}x the file)")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
