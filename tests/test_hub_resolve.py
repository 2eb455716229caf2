"""Resolution against the fake hub with the real huggingface_hub client: commits, files, hashes,
format and the errors a person sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_ai.convert.api import local_source
from local_ai.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    OfflineError,
    UnavailableError,
    UnsafeInputError,
)
from local_ai.hub import client
from local_ai.hub.fetch import fetch
from local_ai.hub.resolve import resolve
from local_ai.manifest.models import ModelSpec
from tests.harness.fakehub import DEFAULT_TOKEN, FakeHub
from tests.hub_repos import (
    FETCHED,
    GGUF_REPO,
    HF_REPO,
    MLX_REPO,
    add_gguf_repo,
    add_hf_repo,
    add_mlx_repo,
    model_files,
    safetensors_bytes,
)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "RETRY_DELAYS", (0.0, 0.0))


def test_mlx_repo_resolves_to_commit_files_sha256_and_quantization(fake_hub: FakeHub) -> None:
    sha = add_mlx_repo(fake_hub)

    got = resolve("coder", ModelSpec(repo=MLX_REPO))

    assert (got.repo, got.revision, got.commit, got.kind) == (MLX_REPO, "main", sha, "repo")
    assert {f.name for f in got.files} == FETCHED
    files = got.by_name()
    weights = fake_hub.entry(MLX_REPO, "model.safetensors")
    assert files["model.safetensors"].sha256 == weights.blob.sha256
    assert files["model.safetensors"].size == weights.blob.size
    config = fake_hub.entry(MLX_REPO, "config.json")
    assert files["config.json"].blob_id == config.blob.git_sha1
    assert files["config.json"].sha256 is None  # not LFS: the hub gives a git blob id only
    assert got.format == "mlx"
    assert got.quantization is not None and got.quantization.label == "4bit"
    assert got.quantization.group_size == 64
    assert got.base_model == "Qwen/Qwen3-0.6B"


def test_plain_safetensors_repo_is_not_mlx(fake_hub: FakeHub) -> None:
    add_hf_repo(fake_hub)
    got = resolve("m", ModelSpec(repo=HF_REPO))
    assert got.format == "safetensors" and got.quantization is None


def test_gguf_reference_resolves_to_the_one_file(fake_hub: FakeHub) -> None:
    add_gguf_repo(fake_hub)

    got = resolve("g", ModelSpec(repo=GGUF_REPO, file="tiny-Q8_0.gguf"))

    assert got.format == "gguf" and [f.name for f in got.files] == ["tiny-Q8_0.gguf"]
    assert got.files[0].sha256 == fake_hub.entry(GGUF_REPO, "tiny-Q8_0.gguf").blob.sha256
    with pytest.raises(NotFoundError) as missing:
        resolve("g", ModelSpec(repo=GGUF_REPO, file="nope.gguf"))
    assert missing.value.hint is not None
    assert "models.g.file" in missing.value.hint and "tiny-Q4_K_M.gguf" in missing.value.hint
    with pytest.raises(ConfigError) as unnamed:
        resolve("g", ModelSpec(repo=GGUF_REPO))
    assert unnamed.value.key == "models.g.file"


def test_revisions_tags_and_commits(fake_hub: FakeHub) -> None:
    old = model_files(quantized=True, seed=1)
    main = add_mlx_repo(fake_hub, revisions={"v1": old})
    v1 = fake_hub.repo_sha(MLX_REPO, "v1")

    assert resolve("a", ModelSpec(repo=MLX_REPO, revision="v1")).commit == v1
    by_sha = resolve("a", ModelSpec(repo=MLX_REPO, revision=v1))
    assert (by_sha.commit, by_sha.revision) == (v1, v1)
    assert resolve("a", ModelSpec(repo=MLX_REPO)).commit == main
    with pytest.raises(NotFoundError, match="revision 'nope'") as error:
        resolve("a", ModelSpec(repo=MLX_REPO, revision="nope"))
    assert "models.a.revision" in str(error.value.hint)


def test_unknown_repo_names_the_key(fake_hub: FakeHub) -> None:
    with pytest.raises(NotFoundError, match="org/missing") as error:
        resolve("a", ModelSpec(repo="org/missing"))
    assert "models.a.repo" in str(error.value.hint)


def test_extra_files_opt_in_to_code(fake_hub: FakeHub) -> None:
    add_mlx_repo(fake_hub)
    got = resolve("a", ModelSpec(repo=MLX_REPO, extra_files=["*.py"]))
    assert {f.name for f in got.files} == FETCHED | {"modeling_tiny.py"}


def test_gated_repo_works_with_the_users_token(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_mlx_repo(fake_hub, gated="manual")
    spec = ModelSpec(repo=MLX_REPO)
    # Metadata is public but config.json is not: refused without a token, naming the fix.
    with pytest.raises(AccessDeniedError, match="gated") as refused:
        resolve("a", spec)
    assert "hf auth login" in str(refused.value.hint)

    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)  # read at call time, not at import
    assert fetch(resolve("a", spec)).path.is_dir()

    monkeypatch.delenv("HF_TOKEN")
    token_file = Path(client.settings.hf_home()) / "token"
    token_file.write_text(DEFAULT_TOKEN + "\n")
    assert resolve("a", spec).commit is not None


def test_hostile_names_in_a_listing_refuse_the_repo(fake_hub: FakeHub) -> None:
    add_mlx_repo(fake_hub)
    fake_hub.inject("hostile_names", names=("../evil",))

    with pytest.raises(UnsafeInputError, match=r"\.\./evil"):
        resolve("a", ModelSpec(repo=MLX_REPO))

    assert fake_hub.file_requests() == []  # refused before anything was downloaded


def test_api_hiccups_are_retried_but_not_forever(fake_hub: FakeHub) -> None:
    sha = add_mlx_repo(fake_hub)
    fake_hub.inject("http_429", target="api", times=1)
    fake_hub.inject("http_500", target="api", times=1)
    assert resolve("a", ModelSpec(repo=MLX_REPO)).commit == sha

    fake_hub.inject("http_500", target="api")
    with pytest.raises(UnavailableError, match="3 attempts"):
        resolve("a", ModelSpec(repo=MLX_REPO))


def test_dead_endpoint_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest points HF_ENDPOINT at a closed port
    with pytest.raises(UnavailableError, match="cannot reach the hub") as error:
        resolve("a", ModelSpec(repo=MLX_REPO))
    assert "HF_HUB_OFFLINE" in str(error.value.hint)


def test_offline_resolution_reads_the_cache(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = add_mlx_repo(fake_hub)
    spec = ModelSpec(repo=MLX_REPO)
    with pytest.raises(OfflineError, match="not in the HuggingFace cache") as error:
        resolve("a", spec, offline=True)
    assert "local-ai lock" in str(error.value.hint)

    online = resolve("a", spec)
    fetch(online)
    fake_hub.clear_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = resolve("a", spec)

    assert fake_hub.requests == []
    assert offline.commit == sha and offline.from_cache
    assert {f.name for f in offline.files} == FETCHED
    by_name = offline.by_name()
    assert by_name["model.safetensors"].sha256 == online.by_name()["model.safetensors"].sha256
    assert offline.format == "mlx" and offline.quantization == online.quantization


def test_local_directory_and_gguf_file(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"quantization": {"bits": 8, "group_size": 32}}))
    (model / "model.safetensors").write_bytes(safetensors_bytes(size=100))
    (model / "run.py").write_text("print('no')")
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF....")

    got = resolve("a", ModelSpec(path="my-model"), base_dir=tmp_path)
    assert got.kind == "path" and got.path == str(model)
    assert [f.name for f in got.files] == ["config.json", "model.safetensors"]
    assert got.format == "mlx" and got.quantization is not None and got.quantization.bits == 8
    single = resolve("g", ModelSpec(path=str(gguf)))
    assert single.format == "gguf" and single.files[0].size == 8
    with pytest.raises(NotFoundError, match="does not exist") as missing:
        resolve("a", ModelSpec(path=str(tmp_path / "nope")))
    assert "models.a.path" in str(missing.value.hint)


def test_models_convert_takes_the_files_apply_takes_from_a_directory(tmp_path: Path) -> None:
    """`models convert DIR` and `path = DIR` pick a directory's files by one rule."""
    d = tmp_path / "model"
    d.mkdir()
    for name in (
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
        "chat_template.jinja", "vocab.txt", "modeling_evil.py", "pytorch_model.bin", "README.md",
    ):  # fmt: skip
        (d / name).write_text("{}" if name.endswith(".json") else "x")
    (d / "sub").mkdir()
    (d / "sub" / "extra.safetensors").write_text("x")
    applied = resolve("m", ModelSpec(path=str(d)))
    converted = local_source(d, hash_files=False)
    names = [f.name for f in converted.files]
    assert names == [f.name for f in applied.files]
    assert "modeling_evil.py" not in names and "pytorch_model.bin" not in names
    assert "chat_template.jinja" in names and "sub/extra.safetensors" not in names
