"""The fake hub against the REAL huggingface_hub client: endpoints, caching, auth and faults.

These tests also pin down how huggingface_hub 1.x reacts to each fault, which is what our own
download code has to compensate for (see the docstring of each fault test).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fakehub import (
    DEFAULT_TOKEN,
    HOSTILE_CONTENT,
    FakeHub,
    client_pointed_at,
    running_hub,
)

REPO = "org/tiny-model"
MIB = 1024 * 1024


def _safetensors_blob(seed: int = 0) -> bytes:
    """~1 MiB "safetensors" file: a real header (one F32 512x512 tensor) and random payload."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [512, 512], "data_offsets": [0, MIB]}}
    ).encode()
    payload = hashlib.shake_256(f"payload-{seed}".encode()).digest(MIB)
    return struct.pack("<Q", len(header)) + header + payload


FILES: dict[str, bytes] = {
    "config.json": json.dumps({"model_type": "qwen3", "hidden_size": 64}).encode(),
    "tokenizer_config.json": json.dumps({"eos_token": "<|im_end|>"}).encode(),
    "model.safetensors": _safetensors_blob(),
}
METADATA: dict[str, Any] = {
    "downloads": 1234,
    "likes": 56,
    "library_name": "mlx",
    "pipeline_tag": "text-generation",
    "tags": ["mlx", "text-generation", "qwen3"],
    "cardData": {"base_model": "Qwen/Qwen3-0.6B", "license": "apache-2.0"},
}


class SleepRecorder:
    """Stands in for the ``time`` module inside huggingface_hub: records backoff sleeps."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    """A running hub with the client of this process pointed at it (constants patched)."""
    with running_hub() as fake, client_pointed_at(fake, tmp_path / "hf-home"):
        yield fake


@pytest.fixture
def tiny(hub: FakeHub) -> str:
    """Adds the small fixture repo; returns its ``main`` commit sha."""
    return hub.add_repo(REPO, FILES, metadata=METADATA)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """Explicit cache dir: huggingface_hub froze HF_HOME at its first import."""
    return tmp_path / "hf-cache"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> SleepRecorder:
    """Make the client's retry backoff instant while recording what it asked for."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    recorder = SleepRecorder()
    monkeypatch.setattr(file_download, "time", recorder)
    monkeypatch.setattr(_http, "time", recorder)
    return recorder


def _download(hub: FakeHub, cache: Path, filename: str = "model.safetensors", **kw: Any) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(REPO, filename, endpoint=hub.url, cache_dir=cache, **kw))


def _snapshot(hub: FakeHub, cache: Path, repo_id: str = REPO, **kw: Any) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, endpoint=hub.url, cache_dir=cache, **kw))


# ---------------------------------------------------------------------------------------------
# Happy paths
# ---------------------------------------------------------------------------------------------


def test_snapshot_download_fetches_repo_into_the_cache(
    hub: FakeHub, tiny: str, cache: Path
) -> None:
    snapshot = _snapshot(hub, cache)

    assert snapshot == cache / "models--org--tiny-model" / "snapshots" / tiny
    assert {p.name for p in snapshot.iterdir()} == set(FILES)
    for name, content in FILES.items():
        assert (snapshot / name).read_bytes() == content
    repo_dir = cache / "models--org--tiny-model"
    assert (repo_dir / "refs" / "main").read_text() == tiny
    # Blob names come from the ETag: sha256 for LFS files, git blob sha1 for regular files.
    blobs = {p.name for p in (repo_dir / "blobs").iterdir()}
    assert hashlib.sha256(FILES["model.safetensors"]).hexdigest() in blobs
    assert hub.entry(REPO, "config.json").blob.git_sha1 in blobs
    assert hub.file_bytes_sent(REPO) == sum(len(c) for c in FILES.values())


def test_model_info_reports_sizes_sha256_and_metadata(hub: FakeHub, tiny: str) -> None:
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)

    assert info.id == REPO
    assert info.sha == tiny
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(FILES)
    weights = siblings["model.safetensors"]
    assert weights.size == len(FILES["model.safetensors"])
    assert weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert weights.lfs.size == len(FILES["model.safetensors"])
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == hub.entry(REPO, "config.json").blob.git_sha1
    assert (info.downloads, info.likes) == (1234, 56)
    assert info.library_name == "mlx"
    assert info.pipeline_tag == "text-generation"
    assert info.tags == ["mlx", "text-generation", "qwen3"]
    assert info.card_data is not None and info.card_data.base_model == "Qwen/Qwen3-0.6B"
    assert info.gated is False and info.private is False
    assert info.created_at is not None and info.last_modified is not None
    # Derived from the safetensors header, as the hub does.
    assert info.safetensors is not None
    assert info.safetensors.parameters == {"F32": 512 * 512}
    assert info.safetensors.total == 512 * 512
    # expand= returns only what was asked for.
    slim = HfApi(endpoint=hub.url).model_info(REPO, expand=["downloads", "sha"])
    assert (slim.downloads, slim.sha, slim.likes, slim.siblings) == (1234, tiny, None, None)


def test_gguf_repo_reports_gguf_info(hub: FakeHub, tmp_path: Path) -> None:
    import gguf
    import numpy as np
    from huggingface_hub import HfApi

    path = tmp_path / "tiny.Q8_0.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_context_length(4096)
    writer.add_token_list(["<s>", "</s>", "a"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hub.add_repo("org/tiny-gguf", {"tiny.Q8_0.gguf": path})

    info = HfApi(endpoint=hub.url).model_info("org/tiny-gguf")

    assert info.gguf is not None
    assert info.gguf["total"] == 24
    assert info.gguf["architecture"] == "qwen3"
    assert info.gguf["context_length"] == 4096
    assert (info.gguf["bos_token"], info.gguf["eos_token"]) == ("<s>", "</s>")
    assert "gguf" in (info.tags or [])


def test_list_models_search_author_filter_sort_limit(hub: FakeHub, tiny: str) -> None:
    from huggingface_hub import HfApi

    hub.add_repo("org/other-model", {"a.txt": b"a"}, metadata={"downloads": 9999, "tags": ["x"]})
    hub.add_repo("someone/tiny-model-gguf", {"b.gguf": b"b"}, metadata={"downloads": 5})
    api = HfApi(endpoint=hub.url)

    assert [m.id for m in api.list_models(search="tiny")] == [REPO, "someone/tiny-model-gguf"]
    assert [m.id for m in api.list_models(author="org")] == [REPO, "org/other-model"]
    assert [m.id for m in api.list_models(filter="qwen3")] == [REPO]
    by_downloads = [m.id for m in api.list_models(sort="downloads")]
    assert by_downloads == ["org/other-model", REPO, "someone/tiny-model-gguf"]
    assert len(list(api.list_models(limit=2))) == 2
    found = next(iter(api.list_models(search="tiny-model", author="org", full=True)))
    assert (found.sha, found.downloads, found.likes) == (tiny, 1234, 56)
    assert found.siblings is not None and {s.rfilename for s in found.siblings} == set(FILES)
    expanded = next(iter(api.list_models(search="tiny-model", expand=["safetensors"])))
    assert expanded.safetensors is not None and expanded.downloads is None


def test_listings_paginate_with_link_headers(hub: FakeHub) -> None:
    from huggingface_hub import HfApi

    hub.page_size = 2
    for i in range(5):
        hub.add_repo(f"org/m{i}", {f"f{j}.txt": b"x" for j in range(3)})
    api = HfApi(endpoint=hub.url)
    hub.clear_requests()

    assert [m.id for m in api.list_models(author="org")] == [f"org/m{i}" for i in range(5)]
    assert len([r for r in hub.requests if r.path.startswith("/api/models?")]) == 3
    assert api.list_repo_files("org/m0") == ["f0.txt", "f1.txt", "f2.txt"]


def test_list_repo_tree_and_files(hub: FakeHub) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    hub.add_repo(
        "org/nested",
        {"README.md": b"# hi", "sub/a.json": b"{}", "sub/deep/w.safetensors": b"\0" * 10},
    )
    api = HfApi(endpoint=hub.url)

    assert api.list_repo_files("org/nested") == [
        "README.md",
        "sub/a.json",
        "sub/deep/w.safetensors",
    ]
    top = list(api.list_repo_tree("org/nested"))
    assert [(type(e).__name__, e.path) for e in top] == [
        ("RepoFile", "README.md"),
        ("RepoFolder", "sub"),
    ]
    inner = {e.path: e for e in api.list_repo_tree("org/nested", path_in_repo="sub")}
    assert isinstance(inner["sub/a.json"], RepoFile) and isinstance(inner["sub/deep"], RepoFolder)
    weights = next(
        e for e in api.list_repo_tree("org/nested", recursive=True) if e.path.endswith("tensors")
    )
    assert isinstance(weights, RepoFile) and weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(b"\0" * 10).hexdigest()
    assert weights.size == 10


def test_revisions_tags_and_commits_move_main(hub: FakeHub, cache: Path) -> None:
    from huggingface_hub import HfApi

    main_sha = hub.add_repo(REPO, {"config.json": b"v0"}, revisions={"v1": {"config.json": b"v1"}})
    api = HfApi(endpoint=hub.url)
    tag_sha = hub.repo_sha(REPO, "v1")
    assert tag_sha != main_sha and len(tag_sha) == 40

    assert api.model_info(REPO, revision="v1").sha == tag_sha
    assert api.resolve_revision(REPO, revision="v1", cache_dir=cache).resolved == tag_sha
    assert _download(hub, cache, "config.json", revision="v1").read_bytes() == b"v1"
    assert _download(hub, cache, "config.json", revision=tag_sha).read_bytes() == b"v1"
    assert _download(hub, cache, "config.json").read_bytes() == b"v0"
    refs = api.list_repo_refs(REPO)
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", tag_sha)]

    first = _snapshot(hub, cache)
    new_sha = hub.commit(REPO, {"config.json": b"v2", "extra.txt": b"e"}, message="bump")
    assert new_sha != main_sha
    assert api.model_info(REPO).sha == new_sha
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == [new_sha, main_sha, tag_sha]
    hub.clear_requests()
    second = _snapshot(hub, cache)

    assert first.name == main_sha and second.name == new_sha
    assert (second / "config.json").read_bytes() == b"v2"
    assert (cache / "models--org--tiny-model" / "refs" / "main").read_text() == new_sha
    # Commit shas are a function of the content: the same repo built again gets the same ones.
    with running_hub() as again:
        rebuilt = again.add_repo(
            REPO, {"config.json": b"v0"}, revisions={"v1": {"config.json": b"v1"}}
        )
        assert rebuilt == main_sha
        assert again.repo_sha(REPO, "v1") == tag_sha


def test_second_snapshot_download_transfers_zero_body_bytes(
    hub: FakeHub, tiny: str, cache: Path
) -> None:
    _snapshot(hub, cache)
    hub.clear_requests()

    _snapshot(hub, cache)

    assert hub.file_bytes_sent() == 0
    assert hub.file_requests() == []  # the cached tree + commit sha make per-file HEADs needless
    assert [r.path for r in hub.requests] == [f"/api/models/{REPO}/revision/main"]


def test_gated_repo_needs_the_token(hub: FakeHub, cache: Path) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    hub.add_repo("org/gated", {"w.safetensors": b"w"}, gated="manual")
    hub.add_repo("org/gated-vip", {"w.safetensors": b"w"}, gated="auto", allowed_tokens={"hf_vip"})
    hub.tokens.add("hf_vip")

    # Metadata stays public, files do not.
    assert HfApi(endpoint=hub.url).model_info("org/gated").gated == "manual"
    with pytest.raises(GatedRepoError) as anonymous:
        _snapshot(hub, cache, "org/gated")
    assert anonymous.value.response.status_code == 401
    path = _snapshot(hub, cache, "org/gated", token=DEFAULT_TOKEN) / "w.safetensors"
    assert path.read_bytes() == b"w"
    assert any(r.header("Authorization") == f"Bearer {DEFAULT_TOKEN}" for r in hub.requests)
    with pytest.raises(GatedRepoError) as not_granted:
        _snapshot(hub, cache, "org/gated-vip", token=DEFAULT_TOKEN)
    assert not_granted.value.response.status_code == 403
    assert _snapshot(hub, cache, "org/gated-vip", token="hf_vip").is_dir()
    # A token the hub does not know is rejected everywhere, like the real hub does.
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as bad:
        HfApi(endpoint=hub.url, token="hf_nope").model_info(REPO)
    assert bad.value.response.status_code == 401


def test_private_repo_is_invisible_without_token(hub: FakeHub, cache: Path) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    hub.add_repo("org/secret", {"a.txt": b"s"}, private=True)
    api = HfApi(endpoint=hub.url)

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/secret")
    assert [m.id for m in api.list_models(search="secret")] == []
    assert [m.id for m in api.list_models(search="secret", token=DEFAULT_TOKEN)] == ["org/secret"]
    assert api.model_info("org/secret", token=DEFAULT_TOKEN).private is True
    assert (_snapshot(hub, cache, "org/secret", token=DEFAULT_TOKEN) / "a.txt").read_bytes() == b"s"


def test_unknown_repo_revision_and_file_map_to_client_errors(
    hub: FakeHub, tiny: str, cache: Path
) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError) as repo_error:
        api.model_info("org/nope")
    assert not isinstance(repo_error.value, GatedRepoError)
    with pytest.raises(RepositoryNotFoundError):
        _snapshot(hub, cache, "org/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        _snapshot(hub, cache, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        _download(hub, cache, "missing.bin")
    assert not api.file_exists(REPO, "missing.bin")
    assert api.file_exists(REPO, "config.json")
    assert not api.repo_exists("org/nope") and api.repo_exists(REPO)


def test_resolve_headers_and_ranges_over_keep_alive(hub: FakeHub, tiny: str) -> None:
    """Raw HTTP/1.1: both requests ride one connection; headers are the ones the client reads."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    conn.request("HEAD", f"/{REPO}/resolve/main/model.safetensors")
    head = conn.getresponse()
    head.read()
    weights = FILES["model.safetensors"]
    assert head.status == 200
    assert head.headers["X-Repo-Commit"] == tiny
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == str(len(weights))
    assert head.headers["Accept-Ranges"] == "bytes"
    conn.request(
        "GET", f"/{REPO}/resolve/{tiny}/model.safetensors", headers={"Range": "bytes=8-15"}
    )
    part = conn.getresponse()
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 8-15/{len(weights)}"
    assert part.read() == weights[8:16]
    conn.request("GET", f"/{REPO}/resolve/main/config.json")
    config = conn.getresponse()
    assert config.read() == FILES["config.json"]
    assert config.headers["ETag"] == f'"{hub.entry(REPO, "config.json").blob.git_sha1}"'
    assert "X-Linked-Etag" not in config.headers
    conn.request("GET", f"/{REPO}/resolve/main/config.json", headers={"Range": "bytes=999-"})
    assert conn.getresponse().status == 416
    conn.close()


def test_add_repo_from_dir_streams_files_from_disk(
    hub: FakeHub, tmp_path: Path, cache: Path
) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_bytes(b"{}")
    (src / "sub" / "weights.safetensors").write_bytes(_safetensors_blob(seed=1))
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main")

    hub.add_repo_from_dir("org/from-dir", src)
    snapshot = _snapshot(hub, cache, "org/from-dir")

    files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    assert files == ["config.json", "sub/weights.safetensors"]
    assert (snapshot / "sub" / "weights.safetensors").read_bytes() == _safetensors_blob(seed=1)
    assert not (snapshot / ".git").exists()
    assert hub.entry("org/from-dir", "sub/weights.safetensors").lfs


def test_hf_endpoint_in_a_subprocess_environment(hub: FakeHub, tiny: str, tmp_path: Path) -> None:
    """No ``endpoint=``: the child picks the hub up from HF_ENDPOINT at import time."""
    script = (
        "from huggingface_hub import constants, hf_hub_download\n"
        "print(constants.ENDPOINT)\n"
        f"print(open(hf_hub_download({REPO!r}, 'config.json')).read())\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "child-hf"),
        "HF_HUB_DISABLE_XET": "1",
    }
    env.pop("HF_HUB_CACHE", None)

    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [hub.url, FILES["config.json"].decode()]
    assert (tmp_path / "child-hf" / "hub" / "models--org--tiny-model" / "refs" / "main").exists()


def test_client_pointed_at_redirects_an_already_imported_client(tiny: str, tmp_path: Path) -> None:
    """Code that passes no ``endpoint=`` still reaches the hub once constants are patched."""
    import huggingface_hub.constants as constants
    from huggingface_hub import HfApi, hf_hub_download

    before = constants.ENDPOINT
    with running_hub() as other, client_pointed_at(other, tmp_path / "other-home"):
        other.add_repo("org/elsewhere", {"x.txt": b"x"})
        assert HfApi().model_info("org/elsewhere").sha == other.repo_sha("org/elsewhere")
        path = Path(hf_hub_download("org/elsewhere", "x.txt"))
        assert path.is_relative_to(tmp_path / "other-home" / "hub")
        assert os.environ["HF_ENDPOINT"] == other.url
    assert before == constants.ENDPOINT, "restored on exit"


# ---------------------------------------------------------------------------------------------
# Faults: each one shown to do what it names, and what huggingface_hub 1.x makes of it
# ---------------------------------------------------------------------------------------------


def test_truncated_body_is_retried_from_scratch_below_10_mib(
    hub: FakeHub, tiny: str, cache: Path, sleeps: SleepRecorder
) -> None:
    """Client: RemoteProtocolError is caught, it sleeps 1 s and re-requests. It only keeps whole
    10 MiB chunks, so a smaller file is fetched again without a Range header. Recovers."""
    hub.inject("truncate", path="model.safetensors", times=1)

    path = _download(hub, cache)

    assert path.read_bytes() == FILES["model.safetensors"]
    gets = hub.file_requests("GET")
    assert [g.faults for g in gets] == [["truncate"], []]
    assert gets[0].body_bytes == len(FILES["model.safetensors"]) // 2
    assert gets[1].range is None
    assert sleeps.calls == [1]


def test_truncated_big_file_resumes_with_range_even_if_range_is_ignored(
    hub: FakeHub, cache: Path, sleeps: SleepRecorder
) -> None:
    """Past 10 MiB the client resumes with ``Range: bytes=10485760-``; a 200 answer to that
    (ignore_range) makes it rewind and rewrite the file. Recovers either way."""
    big = hashlib.shake_256(b"big").digest(11 * MIB)
    hub.add_repo(REPO, {"model.safetensors": big})

    hub.inject("truncate", at=len(big) - 1000, times=1)
    assert _download(hub, cache).read_bytes() == big
    resumed = hub.file_requests("GET")[-1]
    assert (resumed.range, resumed.status, resumed.body_bytes) == ("bytes=10485760-", 206, MIB)

    hub.clear_requests()
    hub.inject("truncate", at=len(big) - 1000, times=1)
    hub.inject("ignore_range", times=1)
    assert _download(hub, cache.with_name("cache-2")).read_bytes() == big
    resumed = hub.file_requests("GET")[-1]
    assert (resumed.range, resumed.status, resumed.faults) == (
        "bytes=10485760-",
        200,
        ["ignore_range"],
    )
    assert resumed.body_bytes == len(big)


def test_permanently_truncated_file_raises_remote_protocol_error(
    hub: FakeHub, tiny: str, cache: Path, sleeps: SleepRecorder
) -> None:
    """Client: 1 try + 5 resumes (1 s apart, 5 s for real), then ``httpx.RemoteProtocolError``
    escapes hf_hub_download; nothing lands in the cache."""
    import httpx

    hub.inject("truncate", path="model.safetensors")

    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
        _download(hub, cache)

    assert len(hub.file_requests("GET")) == 6
    assert sleeps.calls == [1] * 5
    assert list((cache / "models--org--tiny-model" / "blobs").iterdir()) == []


def test_dropped_connection_raises_read_error_without_retry(
    hub: FakeHub, tiny: str, cache: Path, sleeps: SleepRecorder
) -> None:
    """A TCP reset mid-body surfaces as ``httpx.ReadError``: http_get only retries ConnectError,
    timeouts and RemoteProtocolError, so huggingface_hub 1.x gives up at once."""
    import httpx

    hub.inject("drop_connection", path="model.safetensors", times=1)

    with pytest.raises(httpx.ReadError):
        _download(hub, cache)

    assert [g.faults for g in hub.file_requests("GET")] == [["drop_connection"]]
    assert sleeps.calls == []
    # The fault was one-shot: a plain retry by the caller succeeds.
    assert _download(hub, cache).read_bytes() == FILES["model.safetensors"]


def test_flipped_byte_is_not_detected_by_the_client(hub: FakeHub, tiny: str, cache: Path) -> None:
    """Client checks size only: the corrupt file is cached under the *correct* sha256 name.
    Only hashing the bytes (our job) reveals it."""
    hub.inject("flip_byte", path="model.safetensors", at=1000, times=1)

    path = _download(hub, cache)

    good = FILES["model.safetensors"]
    got = path.read_bytes()
    assert len(got) == len(good) and got != good
    assert [i for i in range(len(good)) if got[i] != good[i]] == [1000]
    assert path.resolve().name == hashlib.sha256(good).hexdigest()
    assert hashlib.sha256(got).hexdigest() != path.resolve().name


def test_http_429_is_retried_after_retry_after(
    hub: FakeHub, tiny: str, cache: Path, sleeps: SleepRecorder
) -> None:
    """On file GET/HEAD the client retries 429 (sleeping Retry-After + 1 s) and recovers. The
    JSON API (model_info) does not retry: HfHubHTTPError(429), which snapshot_download turns
    into LocalEntryNotFoundError when nothing is cached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    hub.inject("http_429", path="model.safetensors", methods=("GET",), times=2, retry_after=3)
    assert _download(hub, cache).read_bytes() == FILES["model.safetensors"]
    assert [r.status for r in hub.file_requests("GET")] == [429, 429, 200]
    assert sleeps.calls == [4, 4]

    hub.inject("http_429", target="api", times=1)
    with pytest.raises(HfHubHTTPError) as api_error:
        HfApi(endpoint=hub.url).model_info(REPO)
    assert api_error.value.response.status_code == 429
    assert api_error.value.response.headers["Retry-After"] == "0"
    hub.inject("http_429", target="api", times=1)
    with pytest.raises(LocalEntryNotFoundError):
        _snapshot(hub, cache.with_name("fresh-cache"))


def test_http_500_on_head_is_retried_but_on_get_is_fatal(
    hub: FakeHub, tiny: str, cache: Path, sleeps: SleepRecorder
) -> None:
    """HEAD 500: the client re-does the metadata call with backoff (1, 2, 4, 8, 8 s) and recovers
    if the hub comes back; if not, LocalEntryNotFoundError. GET 500: HfHubHTTPError at once."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    hub.inject("http_500", path="model.safetensors", methods=("HEAD",), times=2)
    assert _download(hub, cache).read_bytes() == FILES["model.safetensors"]
    assert [r.status for r in hub.file_requests("HEAD")] == [500, 500, 200]
    assert sleeps.calls == [1]

    sleeps.calls.clear()
    hub.inject("http_500", path="config.json", methods=("HEAD",))
    with pytest.raises(LocalEntryNotFoundError) as down:
        _download(hub, cache, "config.json")
    assert isinstance(down.value.__cause__, HfHubHTTPError)
    assert sleeps.calls == [1, 2, 4, 8, 8]
    hub.clear_faults()

    hub.inject("http_500", path="tokenizer_config.json", methods=("GET",), times=1)
    with pytest.raises(HfHubHTTPError) as get_error:
        _download(hub, cache, "tokenizer_config.json")
    assert get_error.value.response.status_code == 500


def test_hub_errors_fall_back_to_the_cache_silently(
    hub: FakeHub, tiny: str, cache: Path, sleeps: SleepRecorder
) -> None:
    """Once a ref is cached, a 500 on HEAD or on the API makes the client serve the cached file
    or snapshot with no error (a warning at most) - even if main has moved on the hub."""
    first = _snapshot(hub, cache)
    hub.commit(REPO, {"config.json": b"{}"})
    hub.clear_requests()
    hub.inject("http_500")

    assert _download(hub, cache, "config.json").read_bytes() == FILES["config.json"]
    assert _snapshot(hub, cache) == first
    assert {r.status for r in hub.requests} == {500}
    assert sleeps.calls == []


def test_slow_drip_throttles_and_stays_bounded(hub: FakeHub, tiny: str, cache: Path) -> None:
    """Client: just waits (its read timeout is per chunk, 10 s). The throttle lasts at most
    ``max_seconds`` per response, then the rest goes at full speed."""
    hub.inject("slow", path="config.json", bytes_per_second=100, times=1)
    started = time.monotonic()
    assert _download(hub, cache, "config.json").read_bytes() == FILES["config.json"]
    assert time.monotonic() - started >= len(FILES["config.json"]) / 100 * 0.8

    hub.inject("slow", path="model.safetensors", bytes_per_second=64 * 1024, max_seconds=0.3)
    started = time.monotonic()
    assert _download(hub, cache).read_bytes() == FILES["model.safetensors"]
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 10  # unbounded it would take 16 s
    assert hub.file_requests("GET")[-1].faults == ["slow"]


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "..\\x"])
def test_hostile_file_names_are_refused_by_the_client(
    hub: FakeHub, tiny: str, cache: Path, name: str
) -> None:
    """Both listing endpoints carry the name; snapshot_download raises ValueError
    ("Invalid filename ...") before requesting it, in the cache and in local_dir mode."""
    from huggingface_hub import HfApi

    hub.inject("hostile_names", names=(name,))
    assert name in HfApi(endpoint=hub.url).list_repo_files(REPO)
    siblings = HfApi(endpoint=hub.url).model_info(REPO).siblings or []
    assert name in {s.rfilename for s in siblings}

    with pytest.raises(ValueError, match="Invalid filename"):
        _snapshot(hub, cache)
    with pytest.raises(ValueError, match="Invalid filename"):
        _snapshot(hub, cache, local_dir=cache.parent / "local-dir")
    assert not list(cache.parent.parent.rglob("evil"))
    assert all(r.file != name for r in hub.file_requests())


def test_percent_encoded_dots_are_a_literal_name_to_the_client(
    hub: FakeHub, tiny: str, cache: Path
) -> None:
    """``a/%2e%2e/b`` is not decoded by the client: it becomes a directory named ``%2e%2e``."""
    hub.inject("hostile_names", names=("a/%2e%2e/b",))

    snapshot = _snapshot(hub, cache)

    assert (snapshot / "a" / "%2e%2e" / "b").read_bytes() == HOSTILE_CONTENT


def test_wrong_size_fails_the_consistency_check_only_if_in_head(
    hub: FakeHub, tiny: str, cache: Path
) -> None:
    """HEAD size wrong -> OSError "Consistency check failed" (the GET is honest). Listing size
    wrong -> the client never looks at it, the download succeeds."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub.inject("wrong_size", path="model.safetensors", where=("head",), delta=7)
    with pytest.raises(OSError, match="Consistency check failed") as error:
        _download(hub, cache)
    assert not isinstance(error.value, HfHubHTTPError)
    hub.clear_faults()

    hub.inject("wrong_size", path="model.safetensors", where=("api",), delta=7)
    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    listed = {s.rfilename: s.size for s in info.siblings or []}
    assert listed["model.safetensors"] == len(FILES["model.safetensors"]) + 7
    assert listed["config.json"] == len(FILES["config.json"])
    snapshot = _snapshot(hub, cache)
    assert (snapshot / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_wrong_sha256_goes_unnoticed_by_the_client(hub: FakeHub, tiny: str, cache: Path) -> None:
    """The client trusts X-Linked-Etag blindly: correct bytes are stored under the wrong name,
    and the listing's sha256 disagrees with the bytes. Only our own hashing can tell."""
    from huggingface_hub import HfApi

    hub.inject("wrong_sha256", path="model.safetensors")

    info = HfApi(endpoint=hub.url).model_info(REPO, files_metadata=True)
    path = _download(hub, cache)

    real = hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    listed = next(s for s in info.siblings or [] if s.rfilename == "model.safetensors")
    assert listed.lfs is not None and listed.lfs.sha256 != real
    assert path.read_bytes() == FILES["model.safetensors"]
    assert path.resolve().name == listed.lfs.sha256 != real


def test_faults_are_scoped_and_counted(hub: FakeHub, tiny: str) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        hub.inject("nonsense")  # type: ignore[arg-type]
    fault = hub.inject("http_500", repo_id="org/other", times=1)
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    conn.request("GET", f"/api/models/{REPO}")
    assert conn.getresponse().status == 200  # other repo: not hit
    conn.close()
    assert fault.hits == 0 and hub.faults == [fault]
