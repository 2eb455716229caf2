"""Find variants of a model: on the hub (huggingface_hub's list_models + model_info), or offline
in the HuggingFace cache and local-ai's store. Turns what is found into ``ranking.Variant``s;
the decisions are ``ranking``'s.

Hub calls: one ``list_models`` per search term (most specific first, stopping at the first that
matches), one ``model_info(files_metadata=True)`` per candidate repo for exact file sizes, and
``config.json`` of MLX and safetensors repos (read over HTTP, not stored in the HF cache) for the
KV-cache shape and the quantization. Every call is attempted once: a search is cheap to rerun,
and an unreachable hub should say so at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from local_ai import settings
from local_ai.discovery import names as nm
from local_ai.discovery.ranking import (
    Assessment,
    Choice,
    Group,
    Publisher,
    Variant,
    choose_variant,
    group_ranked,
    rank,
    recognize_publishers,
)
from local_ai.errors import LocalAIError, NotFoundError, OfflineError, UnavailableError
from local_ai.hardware import Hardware
from local_ai.hub import client
from local_ai.hub.filters import select_files
from local_ai.sizing import ArchShape, shape_from_config
from local_ai.store.state import load_state
from local_ai.util.names import name_problem

T = TypeVar("T")

FETCH_LIMIT = 60  # repos asked of the hub per search term
ALL_FETCH_LIMIT = 200  # with --all
WORKERS = 8
MAX_CONFIG_BYTES = 1024 * 1024
# What list_models returns per repo: enough to rank before asking for file sizes.
EXPAND = [
    "author",
    "cardData",
    "downloads",
    "gated",
    "gguf",
    "lastModified",
    "library_name",
    "likes",
    "pipeline_tag",
    "safetensors",
    "siblings",
    "tags",
]
_MLX_TAGS = frozenset(("mlx",))
_ADAPTER_FILES = frozenset(("adapter_config.json", "adapters.safetensors"))


@dataclass(frozen=True)
class Findings:
    """Variants matching a query, where they came from, and what was skipped."""

    query: str
    variants: tuple[Variant, ...]
    source: str  # "hub" or "local"
    term: str | None = None  # the hub search term that matched
    skipped: tuple[str, ...] = ()  # repos left out, with why


@dataclass(frozen=True)
class SearchResult:
    query: str
    context: int
    hardware: Hardware
    findings: Findings
    ranked: tuple[Assessment, ...]
    groups: tuple[Group, ...]
    publishers: Mapping[str, Publisher]
    offline: bool

    def to_dict(self, limit: int | None = None, per_group: int | None = None) -> dict[str, Any]:
        groups = self.groups[:limit] if limit else self.groups
        return {
            "query": self.query,
            "context": self.context,
            "offline": self.offline,
            "source": self.findings.source,
            "hub_term": self.findings.term,
            "hardware": self.hardware.to_dict(),
            "groups": [g.to_dict(g.assessments[:per_group] if per_group else None) for g in groups],
            "groups_total": len(self.groups),
            "publishers": [
                {"author": p.author, "mlx_repos": p.mlx_repos, "share": round(p.share, 3)}
                for p in sorted(self.publishers.values(), key=lambda p: -p.mlx_downloads)
                if p.known
            ],
            "skipped": list(self.findings.skipped),
        }


# ---- turning hub metadata into variants (pure) -------------------------------------------


def _attr(info: Any, name: str, default: Any = None) -> Any:
    if isinstance(info, Mapping):
        return info.get(name, default)
    return getattr(info, name, default)


def base_model_of(card: Any) -> str | None:
    """``base_model`` of a model card (a string or the first of a list)."""
    value = _attr(card, "base_model") if card is not None else None
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str)), None)
    return value if isinstance(value, str) and "/" in value else None


def _sizes(info: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for sibling in _attr(info, "siblings") or []:
        name = _attr(sibling, "rfilename")
        lfs = _attr(sibling, "lfs")
        size = _attr(lfs, "size") if lfs is not None else None
        size = size if isinstance(size, int) else _attr(sibling, "size")
        if isinstance(name, str) and name_problem(name) is None:
            out[name] = size if isinstance(size, int) and size >= 0 else 0
    return out


def _last_modified(info: Any) -> datetime | None:
    value = _attr(info, "last_modified") or _attr(info, "lastModified")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _gguf_params(info: Any) -> tuple[int | None, int | None, str | None]:
    gguf = _attr(info, "gguf")
    if not isinstance(gguf, Mapping):
        return None, None, None
    total = gguf.get("total")
    ctx = gguf.get("context_length")
    arch = gguf.get("architecture")
    return (
        total if isinstance(total, int) and total > 0 else None,
        ctx if isinstance(ctx, int) and ctx > 0 else None,
        arch if isinstance(arch, str) else None,
    )


def _safetensors_params(info: Any) -> dict[str, int]:
    st = _attr(info, "safetensors")
    params = _attr(st, "parameters") if st is not None else None
    if not isinstance(params, Mapping):
        return {}
    return {str(k): int(v) for k, v in params.items() if isinstance(v, int) and v >= 0}


def _max_context(config: Mapping[str, Any]) -> int | None:
    text = config.get("text_config")
    if isinstance(text, Mapping) and "max_position_embeddings" not in config:
        config = text
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def variants_from_info(
    info: Any,
    config: Mapping[str, Any] | None = None,
    *,
    location: str = "hub",
    path: str | None = None,
    alias: str | None = None,
) -> list[Variant]:
    """The variants one repo offers: itself (MLX or original safetensors) or one per GGUF
    quantization. ``info`` is a huggingface_hub ModelInfo (or the same fields as a dict) with
    file sizes; ``config`` its config.json when readable. Adapters and repos without weights
    give none."""
    repo = str(_attr(info, "id") or "")
    sizes = _sizes(info)
    if not repo or not sizes or _ADAPTER_FILES & set(sizes):
        return []
    common: dict[str, Any] = {
        "downloads": int(_attr(info, "downloads") or 0),
        "likes": int(_attr(info, "likes") or 0),
        "last_modified": _last_modified(info),
        "gated": bool(_attr(info, "gated")),
        "location": location,
        "path": path,
        "alias": alias,
    }
    base = base_model_of(_attr(info, "card_data") or _attr(info, "cardData"))
    ggufs = nm.gguf_sets(list(sizes))
    has_safetensors = any(n.endswith(".safetensors") and "/" not in n for n in sizes)
    if ggufs and not has_safetensors:
        gguf_total, ctx, arch = _gguf_params(info)
        out = []
        for gset in ggufs:
            weights = sum(sizes[f] for f in gset.files)
            params_guess = gguf_total or _params_from_name(repo, base)
            out.append(
                Variant(
                    repo=repo,
                    format="gguf",
                    quant=gset.quant,
                    size_bytes=weights,
                    weights_bytes=weights,
                    group="",
                    base_model=base or repo,
                    file=gset.first,
                    files=gset.files,
                    params=params_guess,
                    max_context=ctx,
                    model_type=arch,
                    **common,
                )
            )
        return out
    if not has_safetensors:
        return []
    config = config or {}
    fetched = select_files(sizes)
    weights = sum(sizes[n] for n in fetched if n.endswith(".safetensors"))
    size = sum(sizes[n] for n in fetched)
    tags = {str(t).lower() for t in _attr(info, "tags") or []}
    library = str(_attr(info, "library_name") or "").lower()
    mlx_block = isinstance(config.get("quantization"), Mapping)
    is_mlx = mlx_block or library == "mlx" or bool(_MLX_TAGS & tags)
    st_params = _safetensors_params(info)
    quant = nm.config_quant(config) if config else None
    if quant is None or (quant.source == "config" and quant.label in ("bf16", "fp16", "fp32")):
        named = nm.name_quant(repo)
        bits = nm.dtype_bits(st_params)
        if named is not None and (quant is None or named.bits < 16):
            quant = named
        elif quant is None and bits is not None:
            label = "fp8" if bits <= 8 else ("fp32" if bits > 16 else "bf16")
            quant = nm.QuantLabel(label, bits, source="metadata")
    params: int | None = None
    # The hub counts packed elements for quantized weights (MLX, mxfp4): not parameters.
    unpacked = quant is None or quant.bits >= 8 - 1e-6
    if st_params and unpacked and nm.dtype_bits(st_params) is not None:
        params = sum(st_params.values())
    if params is None and quant is not None and quant.bits > 0:
        params = int(weights * 8 / quant.bits) or None
    return [
        Variant(
            repo=repo,
            format="mlx" if is_mlx else "safetensors",
            quant=quant,
            size_bytes=size,
            weights_bytes=weights,
            group="",
            base_model=(base or repo) if is_mlx else repo,
            params=(_params_from_name(repo, base) or params) if not unpacked or is_mlx else params,
            shape=shape_from_config(config) if config else None,
            max_context=_max_context(config) if config else None,
            model_type=str(config.get("model_type")) if config.get("model_type") else None,
            **common,
        )
    ]


def _params_from_name(*repo_names: str | None) -> int | None:
    """A parameter count a name announces ('…-30B-A3B…' → 30e9: the first size, the total)."""
    for name in repo_names:
        if not name:
            continue
        for word in nm.tokens(name.split("/")[-1]):
            size = nm.parse_size(word)
            if size is not None:
                return int(size)
    return None


def regroup(variants: Sequence[Variant]) -> list[Variant]:
    """Give each variant its group (the base model's stem: originals by their own name,
    packagings by the base model they name) and share what one variant knows with its siblings:
    parameter count (from an original's safetensors, else a GGUF's header), KV-cache shape,
    context length and model type."""
    keyed = [
        replace(v, group=nm.stem(v.base_model if v.format != "safetensors" else v.repo))
        for v in variants
    ]
    params: dict[str, int] = {}
    shapes: dict[str, ArchShape] = {}
    contexts: dict[str, int] = {}
    types: dict[str, str] = {}
    # Originals' counts are exact; GGUF totals next; names and estimates last.
    order = {"safetensors": 0, "gguf": 1, "mlx": 2}
    for v in sorted(keyed, key=lambda v: order[v.format]):
        if v.params and v.group not in params:
            params[v.group] = v.params
        if v.shape is not None and not v.shape.estimated:
            shapes.setdefault(v.group, v.shape)
        if v.max_context:
            contexts.setdefault(v.group, v.max_context)
        if v.model_type:
            types.setdefault(v.group, v.model_type)
    return [
        replace(
            v,
            params=params.get(v.group, v.params),
            shape=v.shape or shapes.get(v.group),
            max_context=v.max_context or contexts.get(v.group),
            model_type=v.model_type or types.get(v.group),
        )
        for v in keyed
    ]


def matching(query: str, variants: Iterable[Variant]) -> list[Variant]:
    """Variants whose repo or base model matches every word of ``query``."""
    return [
        v
        for v in variants
        if nm.name_matches(query, [v.repo, v.base_model, v.file or ""], v.params)
    ]


# ---- the hub -----------------------------------------------------------------------------


def _once(call: Callable[[], T], *, what: str, repo: str = "") -> T:
    """One attempt; huggingface_hub/httpx errors become local-ai errors."""
    try:
        return call()
    except LocalAIError:
        raise
    except Exception as exc:
        error = client.translate(exc, client.Where(repo or "the hub"), what=what)
        if error is None:
            raise
        raise error from exc


def _list(term: str, limit: int) -> list[Any]:
    api = client.api()
    return _once(
        lambda: list(api.list_models(search=term, sort="downloads", limit=limit, expand=EXPAND)),
        what=f"searching the hub for {term!r}",
    )


def _details(repo: str) -> Any:
    api = client.api()
    return _once(
        lambda: api.model_info(repo, files_metadata=True),
        what=f"reading {repo}'s file list",
        repo=repo,
    )


def _config(repo: str, revision: str | None, size: int) -> dict[str, Any] | None:
    """config.json over HTTP (kept out of the HF cache: a search must not fill it)."""
    if size > MAX_CONFIG_BYTES:
        return None
    from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status
    from huggingface_hub.utils._headers import build_hf_headers

    url = hf_hub_url(repo, "config.json", revision=revision, endpoint=client.endpoint())

    def get() -> bytes:
        response = get_session().get(
            url, headers=build_hf_headers(token=client.token()), follow_redirects=True
        )
        hf_raise_for_status(response)
        return bytes(response.content[:MAX_CONFIG_BYTES])

    try:
        data = json.loads(_once(get, what=f"reading {repo}'s config.json", repo=repo))
    except (LocalAIError, ValueError):
        return None  # gated, missing or malformed: sizes are then estimated
    return data if isinstance(data, dict) else None


def hub_candidates(query: str, *, limit: int = FETCH_LIMIT) -> Findings:
    """Variants on the hub matching ``query``. Tries ``names.hub_terms`` in order and stops at
    the first term with matching results."""
    terms = nm.hub_terms(query)
    if not terms:
        raise NotFoundError("the search query is empty", hint="give a model name, e.g. qwen3")
    # Sizes are checked after regrouping: a quantized repo's listing rarely tells its size.
    words = " ".join(w for w in nm.tokens(query) if nm.parse_size(w) is None) or query
    for term in terms:
        listed = _list(term, limit)
        quick = [
            info
            for info in listed
            if nm.name_matches(
                words, [str(info.id), base_model_of(getattr(info, "card_data", None)) or ""]
            )
        ]
        if not quick:
            continue
        variants, skipped = _expand(quick)
        found = matching(query, regroup(variants))
        if found:
            return Findings(query, tuple(found), "hub", term, tuple(skipped))
    return Findings(query, (), "hub", None)


def _expand(listed: Sequence[Any]) -> tuple[list[Variant], list[str]]:
    def one(info: Any) -> tuple[list[Variant], str | None]:
        repo = str(info.id)
        try:
            details = _details(repo)
        except LocalAIError as exc:
            if isinstance(exc, UnavailableError):
                raise
            return [], f"{repo}: {exc}"
        sizes = _sizes(details)
        config = None
        is_gguf_only = not any(n.endswith(".safetensors") for n in sizes)
        if "config.json" in sizes and not is_gguf_only:
            config = _config(repo, getattr(details, "sha", None), sizes["config.json"])
        return variants_from_info(details, config), None

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(one, listed))
    variants = [v for vs, _ in results for v in vs]
    skipped = [why for _, why in results if why]
    return variants, skipped


# ---- offline: the HF cache and the store ----------------------------------------------------


def _snapshot(storage: Path) -> Path | None:
    snapshots = storage / "snapshots"
    try:
        main = (storage / "refs" / "main").read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        main = ""
    if main and (snapshots / main).is_dir():
        return snapshots / main
    try:
        dirs = [d for d in snapshots.iterdir() if d.is_dir()]
    except OSError:
        return None
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def _listing(directory: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            if path.exists():  # dangling links: blobs removed
                out[path.relative_to(directory).as_posix()] = path.stat().st_size
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes()[:MAX_CONFIG_BYTES])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _local_info(repo: str, directory: Path) -> dict[str, Any]:
    sizes = _listing(directory)
    return {
        "id": repo,
        "siblings": [{"rfilename": n, "size": s} for n, s in sorted(sizes.items())],
        "tags": ["mlx"] if repo.startswith("mlx-community/") else [],
    }


def cached_variants() -> list[Variant]:
    """Model repos with weights in the HuggingFace cache (the snapshot main points at)."""
    out: list[Variant] = []
    try:
        entries = sorted(client.cache_dir().glob("models--*"))
    except OSError:
        return out
    for storage in entries:
        repo = storage.name.removeprefix("models--").replace("--", "/", 1)
        snapshot = _snapshot(storage)
        if snapshot is None:
            continue
        config = _read_json(snapshot / "config.json")
        out += variants_from_info(
            _local_info(repo, snapshot), config, location="hf-cache", path=str(snapshot)
        )
    return out


def store_variants() -> list[Variant]:
    """Models local-ai installed (state.json), as their aliases see them."""
    try:
        state = load_state(settings.paths().state_file)
    except LocalAIError:
        return []
    out: list[Variant] = []
    for alias, model in sorted(state.models.items()):
        location = Path(model.location)
        if not location.is_dir():
            continue
        source = model.source.split("@", 1)[0]
        repo = source.split(":", 1)[0] if "/" in source and not source.startswith("/") else alias
        config = _read_json(location / "config.json")
        kind = "store" if model.location_kind == "store" else "hf-cache"
        for v in variants_from_info(
            _local_info(repo, location), config, location=kind, path=str(location), alias=alias
        ):
            out.append(replace(v, format="mlx") if config.get("quantization") else v)
    return out


def local_candidates(query: str) -> Findings:
    """Variants on this machine matching ``query`` (no network)."""
    variants = regroup([*store_variants(), *cached_variants()])
    return Findings(query, tuple(matching(query, variants)), "local")


# ---- entry points ---------------------------------------------------------------------------


def offline_requested(offline: bool) -> bool:
    return offline or settings.hf_offline()


def find(query: str, *, offline: bool = False, fetch_limit: int = FETCH_LIMIT) -> Findings:
    """Candidates for ``query``: from the hub, or from this machine when offline. An
    unreachable hub is an error that says how to search offline."""
    if offline_requested(offline):
        return local_candidates(query)
    try:
        return hub_candidates(query, limit=fetch_limit)
    except OfflineError:
        return local_candidates(query)
    except UnavailableError as exc:
        local = local_candidates(query)
        found = len({v.repo for v in local.variants})
        have = f" ({found} matching model{'s' if found != 1 else ''} found there)"
        raise UnavailableError(
            f"cannot search the hub: {exc}",
            hint="check the network and HF_ENDPOINT; `local-ai models search --offline "
            f"{query}` (or HF_HUB_OFFLINE=1) lists the models already on this machine{have}",
        ) from exc


def search(
    query: str,
    hardware: Hardware,
    context: int,
    *,
    offline: bool = False,
    fetch_limit: int = FETCH_LIMIT,
) -> SearchResult:
    """Find, rank for ``hardware`` at ``context`` tokens, and group by base model."""
    findings = find(query, offline=offline, fetch_limit=fetch_limit)
    publishers = recognize_publishers(
        (v.repo, v.format == "mlx", v.downloads) for v in findings.variants
    )
    ranked = rank(findings.variants, hardware, context, publishers=publishers)
    return SearchResult(
        query,
        context,
        hardware,
        findings,
        tuple(ranked),
        tuple(group_ranked(ranked)),
        publishers,
        offline_requested(offline) or findings.source == "local",
    )


def choose(query: str, hardware: Hardware, context: int, *, offline: bool = False) -> Choice:
    """The variant `models add <name>` installs: the best of the top group for ``query``,
    runners-up, or why nothing fits (with models from other groups that would)."""
    result = search(query, hardware, context, offline=offline)
    if not result.groups:
        where = "on this machine" if result.offline else "on the hub"
        raise NotFoundError(
            f"no model matching {query!r} was found {where}",
            hint="try fewer or other words, e.g. the family name (qwen3, devstral, glm)",
        )
    top = result.groups[0]
    others = [g.best for g in result.groups[1:] if g.best.fits]
    return choose_variant(
        [a.variant for a in top.assessments],
        hardware,
        context,
        query=query,
        publishers=result.publishers,
        alternatives=others,
    )
