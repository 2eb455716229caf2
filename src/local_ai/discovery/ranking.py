"""Which variant of a model to use on this machine, and why. Pure: data in, decisions out.

The rules (docs/discovery.md explains them with examples):

1. fits this machine first (weights + KV cache at the context within ``usable_memory_bytes``);
2. then MLX-ready over convertible safetensors over GGUF (less conversion, fewer surprises);
3. then the quantization closest to the best quality that fits (per base model, on the ladder
   of local-ai's quantize levels);
4. then popularity and freshness: downloads, likes, a bonus for publishers whose MLX
   conversions dominate the results (recognized from the data, no list of names), minus age
   relative to the newest variant.

Variants that do not fit are ordered by the memory they need, closest to fitting first.
Sizes and the `quantize = "auto"` level come from ``local_ai.sizing``, as in the planner, so a
search, an ``add`` and a ``plan`` agree on what fits and at which level.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from local_ai import sizing
from local_ai.discovery.names import QuantLabel, display_name, format_params
from local_ai.hardware import (
    MIB,
    FitResult,
    Hardware,
    fits,
    format_gib,
    recommended_wired_limit_command,
    suggested_wired_limit_mb,
)
from local_ai.sizing import ArchShape, estimated_shape, level_bits

Format = Literal["mlx", "safetensors", "gguf"]
Location = Literal["hub", "hf-cache", "store"]

FORMAT_TIER: Mapping[str, int] = {"mlx": 0, "safetensors": 1, "gguf": 2}
FORMAT_LABEL: Mapping[str, str] = {
    "mlx": "MLX-ready",
    "safetensors": "safetensors (converted on install)",
    "gguf": "GGUF (converted on install)",
}
# Popularity score: log10(downloads) + LIKES_WEIGHT * log10(likes) + publisher bonus - age.
LIKES_WEIGHT = 0.5
PUBLISHER_BONUS = 1.0  # worth 10x downloads
FRESHNESS_PER_YEAR = 0.5
FRESHNESS_MAX_YEARS = 2.0
# A publisher is recognized for MLX conversions when it has this many MLX repos in the results,
# or this share of the downloads of all MLX repos there.
PUBLISHER_MIN_REPOS = 3
PUBLISHER_MIN_SHARE = 0.5
RUNNERS_UP = 3
MIN_USEFUL_CONTEXT = 2048
MAX_MACHINES = 16


# ---- quantization levels ------------------------------------------------------------------


def quality_ladder(group_size: int = sizing.DEFAULT_GROUP_SIZE) -> list[tuple[float, str]]:
    """(bits, level) from lowest to highest quality; bf16 and fp16 share one rung (bf16)."""
    rungs: dict[float, str] = {}
    for level in sizing.CONCRETE_LEVELS:
        rungs.setdefault(level_bits(level, group_size), level)
    return sorted(rungs.items())


def ladder_index(bits: float | None) -> int:
    """Rung of a served precision: the highest level whose bits it reaches; -1 below q2.
    8-bit floats (fp8, mxfp8) count as q8: same quality class, no group scales to pay for."""
    if bits is None:
        return -1
    ladder = quality_ladder()
    index = -1
    for i, (rung_bits, _) in enumerate(ladder):
        if bits + 1e-6 >= rung_bits:
            index = i
    if bits >= 8:
        index = max(index, next(i for i, (_, lvl) in enumerate(ladder) if lvl == "q8"))
    return index


def ladder_level(index: int) -> str:
    ladder = quality_ladder()
    return ladder[index][1] if 0 <= index < len(ladder) else "below q2"


# ---- variants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to get a model: an MLX repo, an original safetensors repo (converted on
    install), or one quantization of a GGUF repo; on the hub or already on this machine."""

    repo: str
    format: Format
    quant: QuantLabel | None  # as published; for originals the source precision
    size_bytes: int  # what a download costs (weights, configs, tokenizer)
    weights_bytes: int  # the weight files alone
    group: str  # key variants of one base model share
    base_model: str  # the base model's repo id (or best name known)
    file: str | None = None  # GGUF: the file `file =` names (the first part when split)
    files: tuple[str, ...] = ()
    params: int | None = None
    shape: ArchShape | None = None
    max_context: int | None = None
    model_type: str | None = None
    downloads: int = 0
    likes: int = 0
    last_modified: datetime | None = None
    gated: bool = False
    location: Location = "hub"
    path: str | None = None  # local directory or file when not on the hub
    alias: str | None = None  # installed alias (store)

    @property
    def author(self) -> str:
        return self.repo.split("/", 1)[0] if "/" in self.repo else ""

    @property
    def label(self) -> str:
        return f"{self.repo}:{self.file}" if self.file else self.repo

    @property
    def bits(self) -> float | None:
        return self.quant.bits if self.quant else None

    @property
    def quant_label(self) -> str:
        return self.quant.label if self.quant else "?"


@dataclass(frozen=True)
class Publisher:
    """An author's MLX conversions among the search results."""

    author: str
    mlx_repos: int
    mlx_downloads: int
    share: float  # of the downloads of all MLX repos in the results
    known: bool

    def describe(self) -> str:
        return (
            f"{self.author}: {self.mlx_repos} MLX conversion{'s' if self.mlx_repos != 1 else ''} "
            f"in these results, {self.share:.0%} of their downloads"
        )


def recognize_publishers(repos: Iterable[tuple[str, bool, int]]) -> dict[str, Publisher]:
    """Publishers of MLX conversions, from (repo id, is MLX, downloads) of every result. Known:
    at least PUBLISHER_MIN_REPOS MLX repos, or PUBLISHER_MIN_SHARE of their downloads."""
    counts: dict[str, int] = {}
    downloads: dict[str, int] = {}
    seen: set[str] = set()
    for repo, is_mlx, dl in repos:
        if not is_mlx or repo in seen or "/" not in repo:
            continue
        seen.add(repo)
        author = repo.split("/", 1)[0]
        counts[author] = counts.get(author, 0) + 1
        downloads[author] = downloads.get(author, 0) + max(0, dl)
    total = sum(downloads.values())
    out: dict[str, Publisher] = {}
    for author, n in counts.items():
        share = downloads[author] / total if total else 0.0
        known = n >= PUBLISHER_MIN_REPOS or (share >= PUBLISHER_MIN_SHARE and total > 0)
        out[author] = Publisher(author, n, downloads[author], share, known)
    return out


# ---- assessment and ranking ---------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """A variant judged for one machine and context."""

    variant: Variant
    quantize: str | None  # the manifest's `quantize` for it (originals: the level chosen)
    bits: float | None  # bits per weight as served
    weights_bytes: int  # in memory once served
    kv_bytes: int
    fit: FitResult
    score: float  # popularity and freshness
    publisher: Publisher | None = None
    auto: sizing.AutoLevel | None = None
    quality_gap: int = 0  # ladder rungs below the best quality that fits for this model
    best_level: str | None = None  # the best quality that fits for this model
    reasons: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.fit.fits

    @property
    def needed(self) -> int:
        return self.fit.needed

    @property
    def level(self) -> str:
        return ladder_level(ladder_index(self.bits))

    @property
    def served_quant(self) -> str:
        """What runs: the published quantization, or the level a conversion produces."""
        if self.variant.format == "safetensors" and self.quantize:
            return self.quantize
        return self.variant.quant_label

    def sort_key(self) -> tuple[Any, ...]:
        v = self.variant
        tier = FORMAT_TIER[v.format]
        tail = (-self.score, v.repo, v.file or "")
        if self.fits:
            return (0, tier, self.quality_gap, *tail)
        return (1, self.needed, tier, *tail)

    def manifest_fields(self) -> dict[str, Any]:
        """Keys for ``[models.<alias>]``: repo, file (GGUF), quantize (originals), name."""
        v = self.variant
        return {
            "repo": v.repo,
            "file": v.file,
            "quantize": self.quantize,
            "name": display_name(v.base_model, self.served_quant),
        }

    def to_dict(self) -> dict[str, Any]:
        v = self.variant
        return {
            "repo": v.repo,
            "file": v.file,
            "files": list(v.files),
            "format": v.format,
            "location": v.location,
            "path": v.path,
            "alias": v.alias,
            "quantization": v.quant_label,
            "quantize": self.quantize,
            "served_quantization": self.served_quant,
            "bits_per_weight": round(self.bits, 3) if self.bits is not None else None,
            "size_bytes": v.size_bytes,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_bytes,
            "memory_bytes": self.needed,
            "available_bytes": self.fit.available,
            "fits": self.fits,
            "fit": self.fit.explanation,
            "kv_estimated": v.shape is None or v.shape.estimated,
            "downloads": v.downloads,
            "likes": v.likes,
            "last_modified": v.last_modified.isoformat() if v.last_modified else None,
            "gated": v.gated,
            "publisher_recognized": bool(self.publisher and self.publisher.known),
            "score": round(self.score, 3),
            "quality_gap": self.quality_gap,
            "best_level_that_fits": self.best_level,
            "reasons": list(self.reasons),
        }


def popularity(
    variant: Variant, newest: datetime | None, publisher: Publisher | None = None
) -> float:
    """log10 downloads + half log10 likes + a recognized-publisher bonus - half a point per
    year behind the newest variant considered (at most two years)."""
    score = math.log10(1 + max(0, variant.downloads))
    score += LIKES_WEIGHT * math.log10(1 + max(0, variant.likes))
    if publisher is not None and publisher.known and variant.format == "mlx":
        score += PUBLISHER_BONUS
    if newest is not None and variant.last_modified is not None:
        years = max(0.0, (newest - variant.last_modified).total_seconds() / (365.25 * 86400))
        score -= FRESHNESS_PER_YEAR * min(years, FRESHNESS_MAX_YEARS)
    return score


def _kv(variant: Variant, context: int) -> int:
    shape = variant.shape or estimated_shape(variant.params)
    return shape.kv_bytes(context)


def assess(
    variant: Variant,
    hardware: Hardware,
    context: int,
    *,
    newest: datetime | None = None,
    publisher: Publisher | None = None,
) -> Assessment:
    """Memory and fit of one variant (before the comparison with its siblings)."""
    score = popularity(variant, newest, publisher)
    kv = _kv(variant, context)
    if variant.format == "safetensors" and variant.bits:
        # The level `quantize = "auto"` would convert to on this machine: the planner's choice.
        auto = sizing.choose_level(
            variant.weights_bytes,
            variant.bits,
            kv,
            hardware.usable_memory_bytes,
            context=context,
            source_level=variant.quant.label if variant.quant else None,
        )
        return Assessment(
            variant,
            auto.level,
            auto.bits,
            auto.weights_bytes,
            kv,
            fits(auto.weights_bytes, kv, hardware),
            score,
            publisher,
            auto,
        )
    return Assessment(
        variant,
        None,
        variant.bits,
        variant.weights_bytes,
        kv,
        fits(variant.weights_bytes, kv, hardware),
        score,
        publisher,
    )


def rank(
    variants: Sequence[Variant],
    hardware: Hardware,
    context: int,
    *,
    publishers: Mapping[str, Publisher] | None = None,
) -> list[Assessment]:
    """Every variant assessed and sorted by the rules in this module's docstring."""
    if publishers is None:
        publishers = recognize_publishers(
            (v.repo, v.format == "mlx", v.downloads) for v in variants
        )
    dates = [v.last_modified for v in variants if v.last_modified is not None]
    newest = max(dates) if dates else None
    assessed = [
        assess(v, hardware, context, newest=newest, publisher=publishers.get(v.author))
        for v in variants
    ]
    best_by_group: dict[str, int] = {}
    for a in assessed:
        if a.fits:
            index = ladder_index(a.bits)
            best_by_group[a.variant.group] = max(best_by_group.get(a.variant.group, -2), index)
    out = []
    for a in assessed:
        best = best_by_group.get(a.variant.group)
        gap = best - ladder_index(a.bits) if best is not None and a.fits else 0
        updated = dataclasses.replace(
            a, quality_gap=max(0, gap), best_level=ladder_level(best) if best is not None else None
        )
        out.append(dataclasses.replace(updated, reasons=_reasons(updated, context)))
    return sorted(out, key=Assessment.sort_key)


def _reasons(a: Assessment, context: int) -> tuple[str, ...]:
    v = a.variant
    kv_note = " (KV cache estimated)" if v.shape is None or v.shape.estimated else ""
    if a.fits:
        first = (
            f"fits: needs {format_gib(a.needed)} of {format_gib(a.fit.available)} usable{kv_note}"
        )
    else:
        first = (
            f"does not fit: needs {format_gib(a.needed)}, {format_gib(a.fit.available)} usable"
            f"{kv_note}"
        )
    reasons = [first]
    if v.format == "mlx":
        reasons.append("MLX-ready: served as published")
    elif v.format == "safetensors":
        reasons.append(f"original weights: converted to {a.quantize} on install")
    else:
        reasons.append(f"GGUF {v.quant_label}: converted to MLX on install")
    if a.fits and a.best_level is not None:
        if a.quality_gap == 0:
            reasons.append(f"{a.level}: the best quality that fits")
        else:
            steps = f"{a.quality_gap} step{'s' if a.quality_gap > 1 else ''}"
            reasons.append(f"{a.level}: {steps} below {a.best_level}, the best that fits")
    popular = f"{v.downloads:,} downloads, {v.likes:,} likes"
    if a.publisher is not None and a.publisher.known and v.format == "mlx":
        popular += f"; publisher recognized ({a.publisher.describe()})"
    reasons.append(popular)
    if v.gated:
        reasons.append("gated: accept its terms on the hub and log in before installing")
    if v.max_context and context > v.max_context:
        reasons.append(f"the model supports {v.max_context:,} tokens, less than {context:,}")
    return tuple(reasons)


# ---- groups -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Variants of one base model, best first."""

    key: str
    base_model: str
    params: int | None
    model_type: str | None
    assessments: tuple[Assessment, ...]

    @property
    def best(self) -> Assessment:
        return self.assessments[0]

    @property
    def downloads(self) -> int:
        return sum(a.variant.downloads for a in self.assessments)

    def to_dict(self, shown: Sequence[Assessment] | None = None) -> dict[str, Any]:
        return {
            "key": self.key,
            "base_model": self.base_model,
            "params": self.params,
            "params_label": format_params(self.params),
            "model_type": self.model_type,
            "fits": self.best.fits,
            "best_level_that_fits": self.best.best_level,
            "variants": [a.to_dict() for a in (self.assessments if shown is None else shown)],
        }


def group_ranked(ranked: Sequence[Assessment]) -> list[Group]:
    """Ranked assessments split by base model; groups ordered by their best variant, then by
    total downloads."""
    members: dict[str, list[Assessment]] = {}
    for a in ranked:
        members.setdefault(a.variant.group, []).append(a)
    groups = []
    for key, items in members.items():
        params = next((a.variant.params for a in items if a.variant.params), None)
        model_type = next((a.variant.model_type for a in items if a.variant.model_type), None)
        base = _base_name(items)
        groups.append(Group(key, base, params, model_type, tuple(items)))
    return sorted(groups, key=lambda g: (g.best.sort_key()[:3], -g.downloads, g.key))


def _base_name(items: Sequence[Assessment]) -> str:
    counts: dict[str, int] = {}
    for a in items:
        counts[a.variant.base_model] = counts.get(a.variant.base_model, 0) + 1
    return max(sorted(counts), key=lambda name: (counts[name], "/" in name))


# ---- the choice ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The variant to install for a name, the runners-up, and why (or why nothing fits)."""

    query: str
    context: int
    hardware: Hardware
    best: Assessment | None
    runners_up: tuple[Assessment, ...]
    ranked: tuple[Assessment, ...]
    explanation: str
    why_nothing_fits: str | None = None
    suggestions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def manifest_fields(self) -> dict[str, Any]:
        """What `models add` writes for the chosen variant (empty when nothing fits)."""
        return self.best.manifest_fields() if self.best is not None else {}

    def lines(self) -> list[str]:
        """Plain-text summary for people: choice, reasons, runners-up, or why nothing fits."""
        out: list[str] = []
        if self.best is not None:
            out.append(f"chosen: {self.best.variant.label} ({self.best.served_quant})")
            out += [f"  - {r}" for r in self.best.reasons]
        else:
            out.append(f"nothing fits: {self.why_nothing_fits}")
            out += [f"  - {s}" for s in self.suggestions]
        if self.runners_up:
            out.append("runners-up:" if self.best is not None else "closest:")
            for a in self.runners_up:
                out.append(
                    f"  {a.variant.label} ({a.served_quant}, {FORMAT_LABEL[a.variant.format]}): "
                    f"{a.reasons[0]}"
                )
        out += [f"note: {n}" for n in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "context": self.context,
            "hardware": self.hardware.to_dict(),
            "best": self.best.to_dict() if self.best else None,
            "manifest": self.manifest_fields(),
            "runners_up": [a.to_dict() for a in self.runners_up],
            "explanation": self.explanation,
            "why_nothing_fits": self.why_nothing_fits,
            "suggestions": list(self.suggestions),
            "notes": list(self.notes),
        }


def choose_variant(
    candidates: Sequence[Variant],
    hardware: Hardware,
    context: int,
    *,
    query: str = "",
    publishers: Mapping[str, Publisher] | None = None,
    alternatives: Sequence[Assessment] = (),
    runners_up: int = RUNNERS_UP,
) -> Choice:
    """The best variant of ``candidates`` for ``hardware`` at ``context`` tokens.

    ``alternatives`` are assessed variants of other models (e.g. other search results) offered
    when nothing here fits.
    """
    if not candidates:
        raise ValueError("choose_variant needs at least one candidate")
    ranked = rank(candidates, hardware, context, publishers=publishers)
    top = ranked[0]
    if top.fits:
        others = tuple(a for a in ranked[1:] if a.fits)[:runners_up]
        return Choice(
            query,
            context,
            hardware,
            top,
            others,
            tuple(ranked),
            _explain(top, context),
            notes=tuple(_notes(top, ranked, hardware, context)),
        )
    closest = tuple(sorted(ranked, key=lambda a: a.needed)[:runners_up])
    why, suggestions = nothing_fits(ranked, hardware, context, alternatives)
    return Choice(
        query, context, hardware, None, closest, tuple(ranked), why, why, tuple(suggestions)
    )


def _explain(a: Assessment, context: int) -> str:
    v = a.variant
    return (
        f"{v.label} ({a.served_quant}, {FORMAT_LABEL[v.format]}) at {context:,} tokens of "
        f"context: " + "; ".join(a.reasons)
    )


def _notes(
    best: Assessment, ranked: Sequence[Assessment], hardware: Hardware, context: int
) -> list[str]:
    notes = []
    better = next(
        (
            a
            for a in ranked
            if a.fits and a.variant.group == best.variant.group and a.quality_gap < best.quality_gap
        ),
        None,
    )
    if better is not None:
        notes.append(
            f"higher quality that fits: {better.variant.label} ({better.served_quant}, "
            f"{FORMAT_LABEL[better.variant.format]})"
        )
    raised = _with_raised_wired_limit(hardware)
    if raised is not None:
        bigger = next(
            (
                a
                for a in ranked
                if not a.fits
                and a.variant.group == best.variant.group
                and ladder_index(a.bits) > ladder_index(best.bits)
                and a.needed <= raised.usable_memory_bytes
            ),
            None,
        )
        if bigger is not None:
            notes.append(
                f"{bigger.variant.label} ({bigger.served_quant}) would fit with a raised GPU "
                f"memory limit: {recommended_wired_limit_command(hardware)}"
            )
    return notes


def _with_raised_wired_limit(hardware: Hardware) -> Hardware | None:
    if not hardware.is_apple_silicon:
        return None
    target = suggested_wired_limit_mb(hardware) * MIB
    if hardware.wired_limit_bytes is not None and target <= hardware.wired_limit_bytes:
        return None
    return dataclasses.replace(hardware, wired_limit_bytes=target, wired_limit_configured=True)


def nothing_fits(
    ranked: Sequence[Assessment],
    hardware: Hardware,
    context: int,
    alternatives: Sequence[Assessment] = (),
) -> tuple[str, list[str]]:
    """Why no variant fits (needed vs available) and what would: a shorter context, a raised
    GPU memory limit, a smaller quantization, another model, more machines."""
    smallest = min(ranked, key=lambda a: a.needed)
    available = hardware.usable_memory_bytes
    v = smallest.variant
    why = (
        f"the smallest variant, {v.label} ({smallest.served_quant}), needs "
        f"{format_gib(smallest.needed)} (weights {format_gib(smallest.weights_bytes)} + KV cache "
        f"{format_gib(smallest.kv_bytes)} at {context:,} tokens) but this machine has "
        f"{format_gib(available)} usable"
    )
    out: list[str] = []
    if smallest.weights_bytes < available and smallest.kv_bytes > 0:
        per_token = smallest.kv_bytes / context
        longest = int((available - smallest.weights_bytes) / per_token) // 1024 * 1024
        if longest >= MIN_USEFUL_CONTEXT:
            out.append(
                f"a shorter context: it fits at context = {longest:,} tokens or less "
                "(set `context` in local-ai.toml)"
            )
    raised = _with_raised_wired_limit(hardware)
    if raised is not None and smallest.needed <= raised.usable_memory_bytes:
        out.append(
            f"a higher GPU memory limit ({format_gib(raised.usable_memory_bytes)} usable): "
            f"{recommended_wired_limit_command(hardware)}"
        )
    if not any(a.variant.format == "safetensors" for a in ranked) and v.params:
        q2 = int(v.params * level_bits("q2") / 8) + smallest.kv_bytes
        if q2 < smallest.needed:
            verdict = "would fit" if q2 <= available else "would still not fit"
            out.append(
                f"a smaller quantization: the original weights at q2 need about "
                f"{format_gib(q2)} and {verdict}"
            )
    fitting = [a for a in alternatives if a.fits]
    if fitting:
        names = ", ".join(
            f"{a.variant.label} ({format_gib(a.needed)})" for a in fitting[:RUNNERS_UP]
        )
        out.append(f"another model that fits: {names}")
    else:
        out.append("another, smaller model: `local-ai models search <name>` shows what fits")
    machines = math.ceil(smallest.needed / available) if available > 0 else 0
    if 1 < machines <= MAX_MACHINES:
        kind = "Macs" if hardware.is_apple_silicon else "machines"
        out.append(
            f"more machines: about {machines} {kind} like this one with the model split across "
            "them (MLX distributed)"
        )
    return why, out


def candidate_summary(variants: Sequence[Variant]) -> dict[str, Any]:
    """Counts per format, for messages."""
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.format] = counts.get(v.format, 0) + 1
    return {"variants": len(variants), "formats": counts}


__all__ = [
    "FORMAT_LABEL",
    "Assessment",
    "Choice",
    "Group",
    "Publisher",
    "Variant",
    "choose_variant",
    "group_ranked",
    "rank",
    "recognize_publishers",
]

_ = field  # dataclasses.field re-exported for subclasses in tests
