"""The same generation straight through `mlx_lm.stream_generate`, in a subprocess (its own
memory and MLX state), to price the server path: `python -m local_ai.bench.raw MODEL P G`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from local_ai.bench.measure import prompt_of
from local_ai.errors import LocalAIError


def run_raw(
    model_path: str, *, prompt_tokens: int, gen_tokens: int, timeout: float = 900
) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "local_ai.bench.raw",
            model_path,
            str(prompt_tokens),
            str(gen_tokens),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-8:])
        raise LocalAIError(f"the raw mlx_lm run of {model_path} failed:\n{tail}")
    return dict(json.loads(lines[-1]))


def _main(argv: list[str]) -> int:
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model_path, prompt_tokens, gen_tokens = argv[0], int(argv[1]), int(argv[2])
    loaded = load(model_path)
    model, tokenizer = loaded[0], loaded[1]
    sampler = make_sampler(temp=0.0)

    def once(salt: int) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt_of(prompt_tokens, salt)}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        first: float | None = None
        last: Any = None
        for response in stream_generate(
            model, tokenizer, prompt, max_tokens=gen_tokens, sampler=sampler
        ):
            if first is None:
                first = time.perf_counter()
            last = response
        end = time.perf_counter()
        assert last is not None
        first = first or end
        generated = int(last.generation_tokens)
        return {
            "prompt_tokens": int(last.prompt_tokens),
            "generated_tokens": generated,
            "ttft_s": first - start,
            "total_s": end - start,
            "decode_tps": (generated - 1) / (end - first) if end > first and generated > 1 else 0.0,
            "prefill_tps": float(last.prompt_tps),
            "peak_memory_bytes": int(last.peak_memory * 1e9),
        }

    once(0)  # warm up: compile kernels, fill caches, as a running server already has
    print(json.dumps(once(1)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
