"""Search and ranking against the fake hub's catalogue of real-looking repos, for simulated Macs.

The catalogue (tests/harness/catalogue.py) is served once per module; each query is searched
once through the real huggingface_hub client, then ranked for several machines (ranking is pure).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local_ai.discovery import names as nm
from local_ai.discovery import search
from local_ai.discovery.ranking import Assessment, Group, choose_variant, group_ranked, rank
from local_ai.hardware import GIB, simulated
from local_ai.manifest.edit import set_model
from local_ai.manifest.load import load_manifest
from tests.harness.catalogue import QWEN3_CODER_30B, add_catalogue
from tests.harness.fakehub import FakeHub, running_hub

CTX = 32768
_found: dict[str, search.Findings] = {}


@pytest.fixture(scope="module")
def catalogue() -> Iterator[FakeHub]:
    with running_hub() as hub:
        repos = add_catalogue(hub)
        assert len(repos) >= 30
        yield hub


@pytest.fixture
def hub(catalogue: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("HF_ENDPOINT", catalogue.url)
    return catalogue


def find(query: str) -> search.Findings:
    if query not in _found:
        _found[query] = search.find(query)
    return _found[query]


def groups(query: str, total_gb: int, context: int = CTX) -> list[Group]:
    return group_ranked(rank(find(query).variants, simulated(total_gb), context))


def best(query: str, total_gb: int) -> Assessment:
    return groups(query, total_gb)[0].best


def test_search_groups_mlx_gguf_and_original_variants_of_one_base_model(hub: FakeHub) -> None:
    found = find("qwen3-coder-30b")
    assert found.term == "qwen3-coder-30b"
    (group,) = groups("qwen3-coder-30b", 64)
    assert group.base_model == QWEN3_CODER_30B.repo
    assert group.params == QWEN3_CODER_30B.params  # from the original's safetensors metadata
    kinds = {(a.variant.format, a.variant.quant_label) for a in group.assessments}
    assert {("mlx", "4bit"), ("mlx", "6bit"), ("mlx", "8bit"), ("safetensors", "bf16")} <= kinds
    assert {("gguf", "Q4_K_M"), ("gguf", "UD-Q4_K_XL"), ("gguf", "Q8_0"), ("gguf", "BF16")} <= kinds
    # The adapter and the repo without weights matched the words but offer nothing to serve.
    assert not any("someone/" in a.variant.repo for a in group.assessments)
    split = next(a.variant for a in group.assessments if a.variant.quant_label == "BF16")
    assert split.file == "BF16/Qwen3-Coder-30B-A3B-Instruct-BF16-00001-of-00002.gguf"
    assert len(split.files) == 2
    # Sizes come from file metadata: the split set is both parts.
    assert split.size_bytes == sum(hub.entry(split.repo, f).blob.size for f in split.files)
    # KV cache from config.json: 2 * 48 layers * 4 KV heads * 128 * 32k tokens * 2 bytes.
    assert all(a.kv_bytes == 3 * GIB for a in group.assessments)


def test_16_gb_nothing_fits_and_says_why(hub: FakeHub) -> None:
    choice = choose_variant(
        [a.variant for a in groups("qwen3-coder-30b", 16)[0].assessments], simulated(16), CTX
    )
    assert choice.best is None
    assert choice.why_nothing_fits is not None
    assert "but this machine has 9.7 GiB usable" in choice.why_nothing_fits
    assert any(s.startswith("a shorter context: it fits at context = ") for s in choice.suggestions)
    assert any("more machines" in s for s in choice.suggestions)
    assert choice.manifest_fields() == {}


def test_36_gb_picks_the_mlx_4bit_of_the_recognized_publisher(hub: FakeHub) -> None:
    top = best("qwen3-coder-30b", 36)
    assert top.variant.repo == "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit"
    assert top.fits and top.publisher is not None and top.publisher.known
    # The same bits from a less recognized publisher rank right behind.
    ranked = groups("qwen3-coder-30b", 36)[0].assessments
    assert ranked[1].variant.repo == "lmstudio-community/Qwen3-Coder-30B-A3B-Instruct-MLX-4bit"
    # 6bit and 8bit MLX need more than the 22.8 GiB usable.
    six = next(a for a in ranked if a.variant.repo.endswith("-6bit"))
    assert not six.fits and six.needed > simulated(36).usable_memory_bytes


def test_64_gb_picks_the_best_quality_mlx_that_fits(hub: FakeHub) -> None:
    top = best("qwen3-coder-30b", 64)
    assert top.variant.repo == "mlx-community/Qwen3-Coder-30B-A3B-Instruct-8bit"
    assert top.quality_gap == 0 and top.best_level == "q8"
    assert "q8: the best quality that fits" in top.reasons


def test_128_gb_prefers_mlx_and_notes_the_higher_quality_conversion(hub: FakeHub) -> None:
    variants = [a.variant for a in groups("qwen3-coder-30b", 128)[0].assessments]
    choice = choose_variant(variants, simulated(128), CTX, query="qwen3-coder-30b")
    assert choice.best is not None
    assert choice.best.variant.repo == "mlx-community/Qwen3-Coder-30B-A3B-Instruct-8bit"
    assert choice.best.best_level == "bf16" and choice.best.quality_gap == 1
    assert any(n.startswith("higher quality that fits: Qwen/Qwen3-Coder") for n in choice.notes)
    assert len(choice.runners_up) == 3 and all(a.fits for a in choice.runners_up)


def test_tiers_order_fitting_variants_mlx_then_safetensors_then_gguf(hub: FakeHub) -> None:
    fitting = [a for a in groups("qwen3-coder-30b", 64)[0].assessments if a.fits]
    tiers = [a.variant.format for a in fitting]
    assert tiers == sorted(tiers, key=["mlx", "safetensors", "gguf"].index)
    # Within GGUF, closest to the best quality first, popularity breaking ties.
    gguf = [a.variant.quant_label for a in fitting if a.variant.format == "gguf"]
    assert gguf[0] == "Q8_0"


def test_non_fitting_variants_follow_by_memory_needed(hub: FakeHub) -> None:
    ranked = groups("glm-4.5-air", 64)[0].assessments
    misses = [a for a in ranked if not a.fits]
    assert [a.needed for a in misses] == sorted(a.needed for a in misses)
    # On 64 GB only the conversion of the original to q2 and the Q2_K GGUF fit.
    fits = [(a.variant.format, a.served_quant) for a in ranked if a.fits]
    assert fits == [("safetensors", "q2"), ("gguf", "Q2_K")]


def test_name_without_size_is_found_by_parameter_count(hub: FakeHub) -> None:
    found = find("devstral 24b")
    assert found.term == "devstral"  # 'devstral-24b' matches no repo name
    assert {v.repo for v in found.variants} == {
        "mistralai/Devstral-Small-2507",
        "mlx-community/Devstral-Small-2507-4bit",
        "mlx-community/Devstral-Small-2507-8bit",
        "bartowski/mistralai_Devstral-Small-2507-GGUF",
    }
    assert search.matching("devstral 70b", found.variants) == []


def test_24_gb_converts_the_original_when_no_mlx_repo_fits(hub: FakeHub) -> None:
    top = best("devstral 24b", 24)
    assert (top.variant.repo, top.quantize) == ("mistralai/Devstral-Small-2507", "q3")
    assert top.manifest_fields()["quantize"] == "q3"
    assert "original weights: converted to q3 on install" in top.reasons


@pytest.mark.parametrize(
    ("query", "total_gb", "repo", "served", "fits"),
    [
        ("glm-4.6", 512, "mlx-community/GLM-4.6-4bit", "4bit", True),
        ("glm-4.6", 128, "zai-org/GLM-4.6", "q2", False),
        ("kimi-k2", 512, "moonshotai/Kimi-K2-Instruct", "q2", True),
        ("minimax-m2", 128, "MiniMaxAI/MiniMax-M2", "q2", True),  # 3bit MLX needs 100.9 GiB
        ("minimax-m2", 512, "mlx-community/MiniMax-M2-4bit", "4bit", True),
        ("deepseek v3.2", 512, "mlx-community/DeepSeek-V3.2-Exp-4bit", "4bit", True),
        ("qwen3 8b", 16, "mlx-community/Qwen3-8B-4bit", "4bit", True),  # 8bit: 12.6 > 9.7
        ("qwen3 8b", 36, "mlx-community/Qwen3-8B-bf16", "bf16", True),
        ("gpt-oss-20b", 24, "mlx-community/gpt-oss-20b-MXFP4", "mxfp4", True),
        ("gpt-oss-20b", 16, "openai/gpt-oss-20b", "q2", True),  # the MXFP4 repo needs 11.8
    ],
)
def test_big_and_small_models_on_simulated_machines(
    hub: FakeHub, query: str, total_gb: int, repo: str, served: str, fits: bool
) -> None:
    top = best(query, total_gb)
    assert (top.variant.repo, top.served_quant, top.fits) == (repo, served, fits)


def test_mla_models_size_their_kv_cache_from_the_latent(hub: FakeHub) -> None:
    kimi = next(v for v in find("kimi-k2").variants if v.format == "mlx")
    assert kimi.shape is not None and (kimi.shape.num_kv_heads, kimi.shape.head_dim) == (1, 288)


def test_gated_repo_is_listed_with_an_estimated_kv_cache(hub: FakeHub) -> None:
    variants = find("llama 3.1 8b").variants
    gated = next(v for v in variants if v.repo == "meta-llama/Llama-3.1-8B-Instruct")
    assert gated.gated
    assert gated.params == 8_030_261_248
    # config.json needs accepted terms; its MLX sibling's config shares the shape.
    assert gated.shape is not None and gated.shape.num_layers == 32
    a = rank(variants, simulated(36), CTX)
    reasons = next(x for x in a if x.variant.repo == gated.repo).reasons
    assert any(r.startswith("gated: accept its terms") for r in reasons)


def test_choose_writes_the_chosen_variant_into_the_manifest(hub: FakeHub, tmp_path: Path) -> None:
    choice = search.choose("qwen3-coder-30b", simulated(36), CTX)
    assert choice.best is not None
    lines = choice.lines()
    assert lines[0] == "chosen: mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit (4bit)"
    assert "runners-up:" in lines
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text("version = 1\n")
    fields = {k: v for k, v in choice.manifest_fields().items() if v is not None}
    set_model(manifest, "coder", fields)
    spec = load_manifest(manifest).manifest.models["coder"]
    assert spec.repo == "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit"
    assert spec.name == "Qwen3 Coder 30B A3B Instruct (4bit)"

    gguf_only = [
        a.variant
        for a in search.search("qwen3-coder-30b", simulated(36), CTX).ranked
        if a.variant.format == "gguf"
    ]
    pick = choose_variant(gguf_only, simulated(36), CTX)
    assert pick.best is not None
    assert pick.manifest_fields()["file"] == "Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf"


def test_unknown_name_is_not_found(hub: FakeHub) -> None:
    from local_ai.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no model matching 'nonexistent-model'"):
        search.choose("nonexistent-model", simulated(36), CTX)


def test_name_parsing() -> None:
    assert nm.stem("bartowski/mistralai_Devstral-Small-2507-GGUF") == "devstral-small-2507"
    assert nm.stem("mlx-community/Qwen3-8B-4bit-DWQ") == "qwen3-8b"
    assert nm.hub_terms("Devstral 24B") == ["devstral-24b", "devstral"]
    q = nm.gguf_quant("Q4_K_M/GLM-4.5-Air-Q4_K_M-00001-of-00002.gguf")
    assert q is not None and q.label == "Q4_K_M"
    assert nm.name_quant("mlx-community/gpt-oss-20b-MXFP4") == nm.QuantLabel("mxfp4", 4.25)
    sets = nm.gguf_sets(
        [
            "a-Q8_0.gguf",
            "b/x-Q2_K-00001-of-00002.gguf",
            "b/x-Q2_K-00002-of-00002.gguf",
            "mmproj-F16.gguf",
        ]
    )
    assert [(s.quant.label, len(s.files)) for s in sets] == [("Q8_0", 1), ("Q2_K", 2)]


def test_sized_files_are_big_in_listings_and_serve_their_header(hub: FakeHub) -> None:
    import httpx

    repo = "mlx-community/Qwen3-8B-4bit"
    entry = hub.entry(repo, "model.safetensors")
    assert entry.lfs and entry.blob.size > 4 * GIB
    url = f"{hub.url}/{repo}/resolve/main/model.safetensors"
    head = httpx.head(url)
    assert int(head.headers["Content-Length"]) == entry.blob.size
    assert head.headers["X-Linked-Size"] == str(entry.blob.size)
    first = httpx.get(url, headers={"Range": "bytes=0-7"}).content
    header_len = int.from_bytes(first, "little")
    tail = httpx.get(url, headers={"Range": f"bytes={entry.blob.size - 4}-"}).content
    assert tail == b"\0\0\0\0"
    body = httpx.get(url, headers={"Range": f"bytes=8-{7 + header_len}"}).content
    assert b'"dtype": "U32"' in body  # the hub derives packed MLX parameter counts from it


def test_offline_lists_installed_store_entries_under_their_alias(tmp_path: Path) -> None:
    import json

    from local_ai import settings
    from local_ai.store.state import InstalledModel, State, save_state
    from tests.hub_repos import safetensors_bytes

    entry = settings.paths().store / "abc123-qwen3-coder-q4"
    entry.mkdir(parents=True)
    config = {
        "model_type": "qwen3_moe",
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "quantization": {"group_size": 64, "bits": 4},
    }
    (entry / "config.json").write_text(json.dumps(config))
    (entry / "model.safetensors").write_bytes(safetensors_bytes())
    model = InstalledModel(
        alias="coder",
        source="Qwen/Qwen3-Coder-30B-A3B-Instruct@" + "a" * 40,
        format="safetensors",
        location=str(entry),
        location_kind="store",
        quantization="q4",
    )
    save_state(settings.paths().state_file, State(models={"coder": model}))
    found = search.find("qwen3 coder", offline=True)
    assert found.source == "local"
    (variant,) = found.variants
    assert (variant.repo, variant.alias, variant.location, variant.format) == (
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
        "coder",
        "store",
        "mlx",
    )
    assert variant.quant_label == "4bit" and variant.shape is not None
    assert search.find("devstral", offline=True).variants == ()
