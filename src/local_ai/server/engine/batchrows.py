"""mlx-lm's BatchGenerator glue: how rank 0's scheduler and a group's followers build a batch and
add rows to it, one home so every rank batches the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def new_batch_generator(model: Any, tokenizer: Any, max_batch: int, prefill_chunk: int) -> Any:
    """mlx-lm's BatchGenerator as every rank of a group must build it (same batching)."""
    from mlx_lm.generate import BatchGenerator

    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [])
    return BatchGenerator(
        model,
        stop_tokens=[[t] for t in eos],
        completion_batch_size=max_batch,
        prefill_batch_size=max_batch,
        prefill_step_size=prefill_chunk,
    )


def insert_row(
    gen: Any,
    prompt: list[int],
    max_tokens: int,
    cache: list[Any],
    cached: list[int],
    sampler: Callable[[Any], Any] | None,
) -> int:
    """Add one row to `gen` (as every rank of a group must): `prompt` the tokens still to
    process after the `cached` ones already in `cache`; `sampler` None for greedy.

    Every row gets a sampler, greedy ones argmax: mlx-lm 0.31's GenerationBatch.filter leaves
    its sampler list untouched when no entry is set, so after a greedy row ended, a sampled row
    joining took the stale slot's place and rows used each other's samplers."""
    (uid,) = gen.insert(
        [prompt],
        max_tokens=[max_tokens],
        caches=[cache],
        all_tokens=[cached],
        samplers=[sampler or _greedy],
    )
    return int(uid)


def _greedy(logprobs: Any) -> Any:
    import mlx.core as mx

    return mx.argmax(logprobs, axis=-1)
