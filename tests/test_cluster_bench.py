"""The cluster benchmark's link figure: the bytes per token computed from mlx-lm's sharding are
what two real ranks under `mlx.launch --backend ring` send over their sockets, and a sharded
model picks the same greedy tokens as the whole one; the served path times full answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks import cluster


@pytest.mark.slow
def test_computed_link_bytes_match_the_sockets_of_two_real_ranks(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    # Tensor mode only: its formula has the most parts (per layer, ring all-reduce); the
    # pipeline formula is checked by every benchmark run (docs/benchmarks/cluster-*.json).
    argv = ["--modes", "tensor", "--rounds", "1", "--repeats", "1", "--tokens", "12"]
    argv += ["--out", str(out)]
    assert cluster.main(argv) == 0

    report = json.loads(out.read_text())
    assert "load average" in report["uptime_before"]
    assert list(report["modes"]) == ["tensor"]
    for mode, doc in report["modes"].items():
        one, two = doc["ranks"]["1"], doc["ranks"]["2"]
        assert one["link_bytes_per_token"]["measured"]["max"] == 0, mode
        computed = two["link_bytes_per_token"]["computed"]
        measured = two["link_bytes_per_token"]["measured"]["median"]
        assert computed > 0
        # The window between first and last token can hold part of one more forward pass.
        assert computed * 0.95 <= measured <= computed * 1.1, (mode, computed, measured)
        assert doc["same_tokens_as_one_rank"], mode
        assert two["decode_tok_s"]["median"] > 0
    # The served path: our engine, 1 rank and the 2-rank group, every answer its full length.
    for ranks, row in report["served"]["tensor"]["ranks"].items():
        assert row["completion_tokens"]["min"] == 12, ranks
        assert row["decode_tok_s"]["min"] > 0 and row["ttft_s"]["min"] > 0, ranks


def test_link_traffic_grows_with_ranks_as_the_collectives_do() -> None:
    # 4 ranks: pipeline hands the hidden state on 3 times and all_gathers 4 x 3 pieces;
    # tensor all-reduces twice per layer, each 2 x 3 rows over the ring.
    assert cluster.link_traffic("pipeline", 100, 10, 4, 2) == {"bytes": 15 * 200, "collectives": 4}
    assert cluster.link_traffic("tensor", 100, 10, 4, 2) == {"bytes": 120 * 200, "collectives": 20}
    assert cluster.link_traffic("tensor", 100, 10, 1, 2) == {"bytes": 0, "collectives": 0}
