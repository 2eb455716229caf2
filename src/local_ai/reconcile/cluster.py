"""Sharded models on [cluster] hosts, for the planner: which share each rank holds, whether
it fits that host, what must be copied there, and what keeps a host from taking part. Pure:
host reports in (observed over ssh by local_ai.cluster.observe), plan data out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from local_ai.cluster.observe import rank_order
from local_ai.manifest.models import ClusterSettings, ModelSpec
from local_ai.reconcile.model import HostPlan, Share, SourceView

if TYPE_CHECKING:
    from local_ai.cluster.observe import HostReport

# Packages every rank must run at rank 0's version: the ranks load one model with one
# sharding code and exchange MLX arrays.
SAME_VERSION = ("mlx", "mlx-lm", "local-ai")
GIB = 1024**3

# What mlx-lm 0.31 (pyproject pins <0.32) can shard, by model module; tests check these against
# the installed mlx-lm. Tensor: Model.shard(); pipeline: a PipelineMixin layer stack.
MODULE_OF_TYPE = {
    "mistral": "llama",
    "iquestcoder": "llama",
    "kimi_k2": "deepseek_v3",
    "joyai_llm_flash": "deepseek_v3",
    "minimax_m2": "minimax",
}
PIPELINE_MODULES = frozenset(
    {"deepseek_v2", "deepseek_v3", "glm4_moe", "glm4_moe_lite", "kimi_k25", "kimi_vl", "ministral3"}
)
TENSOR_MODULES = frozenset(
    {
        "deepseek_v2", "deepseek_v3", "deepseek_v32", "exaone_moe", "glm4_moe", "glm4_moe_lite",
        "glm_moe_dsa", "gpt_oss", "iquestloopcoder", "kimi_k25", "llama", "longcat_flash",
        "longcat_flash_ngram", "minimax", "ministral3", "qwen2", "qwen3", "qwen3_5",
        "qwen3_5_moe", "solar_open", "step3p5",
    }
)  # fmt: skip


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GB"


def pipeline_layers(num_layers: int, ranks: int) -> list[range]:
    """The layers each rank runs, split the way mlx-lm 0.31 splits them
    (mlx_lm/models/pipeline.py): rank 0 gets the last layers. When `ranks` does not divide
    `num_layers`, that split leaves a layer to no rank (61 over 2: layer 30)."""
    per, extra = divmod(num_layers, ranks)
    out = []
    for rank in range(ranks):
        count = per + (1 if rank < extra else 0)
        start = (ranks - rank - 1) * count
        out.append(range(start, min(start + count, num_layers)))
    return out


def unusable(spec: ModelSpec, hosts: Mapping[str, HostReport]) -> list[str]:
    """Why hosts of this placement cannot be planned now (unreachable, memory unknown)."""
    out = []
    for name in spec.hosts or ():
        report = hosts.get(name)
        if report is None:
            out.append(f"{name} was not observed")
        elif not report.reachable:
            out.append(f"{name} is unreachable ({report.error})")
        elif report.hardware is None:
            out.append(f"{name} did not report its memory ({report.error})")
    return out


def shares(
    alias: str, spec: ModelSpec, source: SourceView, weights: int, kv_cache: int
) -> tuple[list[Share], str | None]:
    """Each rank's share of weights and KV cache, or why the placement cannot work."""
    hosts = spec.hosts or []
    n = len(hosts)
    if (unsupported := _unsupported(alias, spec, source)) is not None:
        return [], unsupported
    if spec.parallel == "tensor":
        heads = source.num_kv_heads
        if heads and heads % n:
            return [], (
                f"models.{alias}: tensor parallel splits the {heads} KV heads evenly across "
                f"ranks, and {n} hosts do not divide {heads}; use a number of hosts that does, "
                'or parallel = "pipeline"'
            )
        part = f"1/{n} of every layer"
        return [
            Share(alias, r, n, part, math.ceil(weights / n), math.ceil(kv_cache / n))
            for r in range(n)
        ], None
    layers = source.num_layers
    if not layers:  # config.json not seen yet: an even split is the best estimate
        return [
            Share(alias, r, n, f"1/{n} of the layers", weights // n, kv_cache // n)
            for r in range(n)
        ], None
    if layers < n:
        return [], f"models.{alias}: {layers} layers cannot be split over {n} pipeline ranks"
    ranges = pipeline_layers(layers, n)
    covered = set().union(*ranges)
    missing = [i for i in range(layers) if i not in covered]
    if missing:
        return [], (
            f"models.{alias}: mlx-lm's pipeline split of {layers} layers over {n} ranks "
            f"leaves layer {', '.join(map(str, missing))} to no rank "
            "(mlx_lm/models/pipeline.py); place it on a number of hosts that divides "
            f'{layers}, or use parallel = "tensor"'
        )
    return [
        Share(
            alias,
            r,
            n,
            f"layers {rng.start}-{rng.stop - 1}",
            weights * len(rng) // layers,
            kv_cache * len(rng) // layers,
        )
        for r, rng in enumerate(ranges)
    ], None


def _unsupported(alias: str, spec: ModelSpec, source: SourceView) -> str | None:
    """Why mlx-lm cannot split this model type the way the manifest asks, or None."""
    if source.model_type is None:
        return None  # config.json not seen yet: checked once it is
    module = MODULE_OF_TYPE.get(source.model_type, source.model_type)
    modes = [m for m, known in (("tensor", TENSOR_MODULES), ("pipeline", PIPELINE_MODULES))
             if module in known]  # fmt: skip
    if spec.parallel in modes:
        return None
    other = f'; use parallel = "{modes[0]}"' if modes else ""
    return (
        f"models.{alias}: mlx-lm 0.31 has no {spec.parallel} parallelism for model_type "
        f"{source.model_type!r}{other}"
        + ("" if modes else " (it cannot shard this architecture at all)")
    )


def version_problems(
    cluster: ClusterSettings, used: list[str], hosts: Mapping[str, HostReport]
) -> list[str]:
    """Hosts whose local-ai, mlx or mlx-lm differ from rank 0's, or that lack them."""
    ref = hosts.get(cluster.rank0)
    problems = []
    for name in used:
        report = hosts.get(name)
        if name == cluster.rank0 or report is None or not report.reachable or ref is None:
            continue
        for package in SAME_VERSION:
            want, have = ref.version(package), report.version(package)
            if have is None:
                problems.append(
                    f"cluster.hosts.{name}: {package} is not installed for "
                    f"{report.executable or 'its Python'} ({report.error or 'not found'}); "
                    "install local-ai there as on this machine (docs/cluster.md)"
                )
                break
            if want is not None and have != want:
                problems.append(
                    f"cluster.hosts.{name}: {package} {have} differs from rank 0's "
                    f"({cluster.rank0}) {want}; every rank must run the same {package}"
                )
    return problems


def host_plans(
    cluster: ClusterSettings,
    hosts: Mapping[str, HostReport],
    placed: list[Share],
    host_of: Mapping[tuple[str, int], str],
    copies: Mapping[str, int],
    single_mac: int,
) -> tuple[list[HostPlan], list[str]]:
    """Per host: its shares, peak memory against its usable memory, bytes to copy; and an
    error for each host a placement does not fit."""
    plans: list[HostPlan] = []
    errors: list[str] = []
    for name in rank_order(cluster):
        report = hosts.get(name)
        mine = tuple(s for s in placed if host_of[(s.alias, s.rank)] == name)
        extra = single_mac if name == cluster.rank0 else 0
        peak = sum(s.weights + s.kv_cache for s in mine) + extra
        if report is None or not report.reachable or report.hardware is None:
            why = "not observed" if report is None else report.error or "no memory reported"
            plans.append(HostPlan(name, f"cannot be used: {why}", mine, extra))
            continue
        hw = report.hardware
        usable = hw.usable_memory_bytes
        versions = ", ".join(f"{p} {report.version(p) or 'missing'}" for p in SAME_VERSION)
        plans.append(
            HostPlan(
                name,
                f"{hw.chip}, {_gb(hw.total_memory_bytes)}, {versions}",
                mine,
                extra,
                peak,
                usable,
                copies.get(name, 0),
            )
        )
        if peak > usable:
            parts = [f"{s.alias} {_gb(s.weights + s.kv_cache)}" for s in mine]
            if extra:
                parts.append(f"single-Mac models {_gb(extra)}")
            errors.append(
                f"cluster.hosts.{name}: needs about {_gb(peak)} ({', '.join(parts)}) but has "
                f"{_gb(usable)} usable; place the model on more hosts, lower its quantize "
                "level or context, or raise the GPU wired limit there"
            )
        if report.free_disk is not None and copies.get(name, 0) > report.free_disk:
            errors.append(
                f"cluster.hosts.{name}: {_gb(copies[name])} must be copied there but its disk "
                f"has {_gb(report.free_disk)} free; free space on {report.store or 'its store'}"
            )
    return plans, errors
