"""The manifest: valid files load, and each bad file gets a message naming file, line, key, fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_ai.errors import ConfigError, ManifestError, NotFoundError
from local_ai.manifest.load import load_manifest, parse_manifest
from local_ai.manifest.models import Manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
GOOD = """
version = 1
[models.coder]
repo = "mlx-community/Qwen3-8B-4bit"
"""

CLUSTER = b"""
[cluster]
rank0 = "studio"

[cluster.hosts.studio]
address = "192.168.2.1"

[cluster.hosts.mini]
ssh = "me@mini.local"
python = "/opt/local-ai/bin/python"
address = "192.168.2.2"

[models.big]
repo = "mlx-community/Big-4bit"
hosts = ["studio", "mini"]
parallel = "pipeline"
"""

# (id, file bytes, expected line, expected key, substrings of the message)
BAD_MANIFESTS: list[tuple[str, bytes, int | None, str | None, list[str]]] = [
    (
        "bad-quantize-level",
        b'[models.coder]\nrepo = "a/b"\nquantize = "q7"\n',
        3,
        "models.coder.quantize",
        [
            "'q7' is not a level; use one of q2, q3, q4, q5, q6, q8, mxfp4, mixed_3_6, "
            "mixed_4_6, bf16, fp16, auto"
        ],
    ),
    (
        "unknown-key-typo",
        b'[server]\nprot = 8081\n[models.a]\nrepo = "a/b"\n',
        2,
        "server.prot",
        ["unknown key 'prot'", "did you mean 'port'?"],
    ),
    (
        "unknown-top-level-table",
        b'[model.coder]\nrepo = "a/b"\n',
        1,
        "model",
        ["unknown key 'model'", "did you mean 'models'?"],
    ),
    (
        "port-as-string",
        b'[server]\nport = "8080"\n[models.a]\nrepo = "a/b"\n',
        2,
        "server.port",
        ["expected an integer, got a string ('8080')"],
    ),
    (
        "port-out-of-range",
        b'[server]\nport = 70000\n[models.a]\nrepo = "a/b"\n',
        2,
        "server.port",
        ["must be at most 65535"],
    ),
    (
        "public-bind-without-key",
        b'[server]\nhost = "0.0.0.0"\n[models.a]\nrepo = "a/b"\n',
        1,
        "server",
        ["not loopback", "api_key_env"],
    ),
    (
        "no-source",
        b"[models.coder]\ncontext = 4096\n",
        1,
        "models.coder",
        ["give exactly one source"],
    ),
    (
        "two-sources",
        b'[models.coder]\nrepo = "a/b"\npath = "/tmp/x"\n',
        1,
        "models.coder",
        ["give exactly one source"],
    ),
    (
        "gguf-file-without-repo",
        b'[models.coder]\npath = "/m"\nfile = "x.gguf"\n',
        1,
        "models.coder",
        ["set `repo` too"],
    ),
    (
        "file-not-gguf",
        b'[models.coder]\nrepo = "a/b"\nfile = "model.safetensors"\n',
        1,
        "models.coder",
        ["must be a .gguf file"],
    ),
    (
        "file-traversal",
        b'[models.coder]\nrepo = "a/b"\nfile = "../../etc/x.gguf"\n',
        1,
        "models.coder",
        ["must be a path inside the repo"],
    ),
    (
        "bad-repo-id",
        b'[models.coder]\nrepo = "just-a-name"\n',
        2,
        "models.coder.repo",
        ["is not a HuggingFace repo id"],
    ),
    (
        "alias-with-slash",
        b'[models."org/name"]\nrepo = "a/b"\n',
        1,
        "models.'org/name'",
        ["alias 'org/name' may use letters"],
    ),
    (
        "default-model-unknown",
        b'[server]\ndefault_model = "nope"\n[models.coder]\nrepo = "a/b"\n',
        2,
        "server.default_model",
        ["'nope' is not a model alias; declared aliases: coder"],
    ),
    (
        "preload-unknown",
        b'[server]\npreload = ["coder", "ghost"]\n[models.coder]\nrepo = "a/b"\n',
        2,
        "server.preload[1]",
        ["'ghost' is not a model alias"],
    ),
    (
        "claude-tier-unknown",
        b'[models.coder]\nrepo = "a/b"\n[clients.claude_code]\nhaiku = "fast"\n',
        4,
        "clients.claude_code.haiku",
        ["'fast' is not a model alias"],
    ),
    (
        "bad-group-size",
        b'[models.coder]\nrepo = "a/b"\nquantize = "q4"\ngroup_size = 48\n',
        4,
        "models.coder.group_size",
        ["48 is not a group size; use one of 32, 64, 128"],
    ),
    (
        "bad-duration",
        b'[server.engine]\nidle_ttl = "soon"\n[models.a]\nrepo = "a/b"\n',
        2,
        "server.engine.idle_ttl",
        ["'soon' is not a duration"],
    ),
    (
        "newer-version",
        b'version = 2\n[models.a]\nrepo = "a/b"\n',
        1,
        "version",
        ["version 2 is not supported"],
    ),
    (
        "cors-wildcard",
        b'[server]\ncors_origins = ["*"]\n[models.a]\nrepo = "a/b"\n',
        2,
        "server.cors_origins",
        ["is not an exact origin"],
    ),
    (
        "short-api-key",
        b'[server]\napi_key = "abc"\n[models.a]\nrepo = "a/b"\n',
        2,
        "server.api_key",
        ["at least 8 characters"],
    ),
    (
        "models-not-a-table",
        b'models = "coder"\n',
        1,
        "models",
        ["expected a table, got a string"],
    ),
    ("duplicate-key", b"[server]\nport = 1\nport = 2\n", 3, None, ["duplicate key"]),
    (
        "duplicate-table",
        b'[models.a]\nrepo = "a/b"\n[models.a]\nrepo = "c/d"\n',
        3,
        None,
        ["duplicate key or table"],
    ),
    ("syntax-error", b"[server\nport = 1\n", 1, None, ["invalid TOML"]),
    ("empty-file", b"", None, None, ["the manifest is empty", "local-ai init"]),
    ("only-comments", b"# nothing here\n\n", None, None, ["the manifest is empty"]),
    ("non-utf8", b'[models.a]\nrepo = "a/b"\nname = "caf\xe9"\n', 3, None, ["not valid UTF-8"]),
    (
        "deeply-nested",
        b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        None,
        None,
        ["nested too deeply"],
    ),
    (
        "inline-table-error",
        b'[models]\ncoder = { repo = "a/b", quantize = "q9" }\n',
        2,
        "models.coder.quantize",
        ["'q9' is not a level"],
    ),
    (
        "cluster-rank0-not-a-host",
        CLUSTER.replace(b'rank0 = "studio"', b'rank0 = "nope"'),
        3,
        "cluster.rank0",
        ["'nope' is not a host; declared hosts: studio, mini"],
    ),
    (
        "cluster-ring-needs-address",
        CLUSTER.replace(b'address = "192.168.2.2"\n', b""),
        8,
        "cluster.hosts.mini",
        ["address is required: the ring backend connects every rank by IP address"],
    ),
    (
        "cluster-address-not-ip",
        CLUSTER.replace(b'"192.168.2.2"', b'"mini.local"'),
        11,
        "cluster.hosts.mini.address",
        ["'mini.local' is not an IP address"],
    ),
    (
        "cluster-ssh-required-off-rank0",
        CLUSTER.replace(b'ssh = "me@mini.local"\n', b""),
        8,
        "cluster.hosts.mini",
        ["ssh is required"],
    ),
    (
        "cluster-ssh-option-injection",
        CLUSTER.replace(b'"me@mini.local"', b'"-oProxyCommand=evil"'),
        9,
        "cluster.hosts.mini.ssh",
        ["is not an ssh destination", "not starting with '-'"],
    ),
    (
        "cluster-ssh-shell-characters",
        CLUSTER.replace(b'"me@mini.local"', b'"mini;touch /tmp/x"'),
        9,
        "cluster.hosts.mini.ssh",
        ["is not an ssh destination"],
    ),
    (
        "placement-bad-host-name",
        CLUSTER.replace(b'["studio", "mini"]', b'["studio", "mini/2"]'),
        15,
        "models.big.hosts[1]",
        ["'mini/2' is not a host name"],
    ),
    (
        "cluster-jaccl-needs-rdma-mesh",
        CLUSTER.replace(b'rank0 = "studio"', b'rank0 = "studio"\nbackend = "jaccl"'),
        6,
        "cluster.hosts.studio",
        ["backend 'jaccl' needs an RDMA device to every other host; missing rdma for mini"],
    ),
    (
        "placement-rank0-first",
        CLUSTER.replace(b'["studio", "mini"]', b'["mini", "studio"]'),
        15,
        "models.big.hosts",
        ["rank 0 must be 'studio'", "list it first"],
    ),
    (
        "placement-unknown-host",
        CLUSTER.replace(b'["studio", "mini"]', b'["studio", "mac3"]'),
        15,
        "models.big.hosts[1]",
        ["'mac3' is not a host; declared hosts: studio, mini"],
    ),
    (
        "placement-needs-parallel",
        CLUSTER.replace(b'parallel = "pipeline"\n', b""),
        13,
        "models.big",
        ['needs `parallel = "pipeline"`'],
    ),
    (
        "placement-without-cluster",
        b'[models.big]\nrepo = "a/b"\nhosts = ["x", "y"]\nparallel = "tensor"\n',
        3,
        "models.big.hosts",
        ["there is no [cluster]"],
    ),
    (
        "placement-auto-quantize",
        CLUSTER.replace(b'parallel = "pipeline"', b'parallel = "pipeline"\nquantize = "auto"'),
        13,
        "models.big",
        ["quantize = 'auto' picks a level for one Mac"],
    ),
    (
        "parallel-without-hosts",
        b'[models.a]\nrepo = "a/b"\nparallel = "tensor"\n',
        1,
        "models.a",
        ["`parallel` applies to a model placed on `hosts`"],
    ),
]


@pytest.mark.parametrize(
    ("content", "line", "key", "needles"),
    [pytest.param(c, ln, k, n, id=i) for i, c, ln, k, n in BAD_MANIFESTS],
)
def test_bad_manifest_message(
    tmp_path: Path, content: bytes, line: int | None, key: str | None, needles: list[str]
) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    err = info.value
    problems = err.problems if isinstance(err, ManifestError) else [err]
    text = "\n".join(str(p) + (f" hint: {p.hint}" if p.hint else "") for p in problems)
    matching = [p for p in problems if key is None or p.key == key]
    assert matching, f"no problem with key {key!r} in:\n{text}"
    problem = matching[0]
    assert problem.path == path
    assert str(path) in str(problem)
    assert problem.line == line, text
    for needle in needles:
        assert needle in text


def test_bad_manifest_corpus_is_large_enough() -> None:
    assert len(BAD_MANIFESTS) >= 15


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[server]\nport = "x"\nhots = 1\n[models.a]\nrepo = "a/b"\nquantize = "q7"\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert [p.key for p in info.value.problems] == [
        "server.port",
        "server.hots",
        "models.a.quantize",
    ]
    assert [p.line for p in info.value.problems] == [2, 3, 6]


def test_missing_file_names_init(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        load_manifest(tmp_path / "absent.toml")
    assert "local-ai init" in (info.value.hint or "")


def test_example_manifest_is_valid_and_documents_every_key() -> None:
    example = REPO_ROOT / "local-ai.toml.example"
    loaded = load_manifest(example)
    assert set(loaded.manifest.models) == {"coder", "general", "devstral"}
    assert example.read_text().startswith("#:schema ./schemas/local-ai.schema.json\n")
    text = example.read_text()
    from local_ai.manifest.models import (
        BenchmarkSettings,
        ClaudeCodeClient,
        ClusterHost,
        ClusterSettings,
        EngineSettings,
        GooseClient,
        ModelSpec,
        ServerSettings,
        ZedClient,
    )

    for model in (
        ServerSettings,
        EngineSettings,
        ModelSpec,
        BenchmarkSettings,
        ZedClient,
        ClaudeCodeClient,
        GooseClient,
        ClusterSettings,
        ClusterHost,
    ):
        for field in model.model_fields:
            shown = f"{field} =" in text or f".{field}]" in text  # a key, or a sub-table
            assert shown, f"{model.__name__}.{field} is not shown in the example"


def test_reordered_keys_have_the_same_fingerprint() -> None:
    a = parse_manifest(
        '[server]\nport = 8081\nhost = "127.0.0.1"\n[models.x]\nrepo = "a/b"\ncontext = 4096\n'
        '[models.y]\npath = "/m"\n'
    )
    b = parse_manifest(
        '# a comment\n[models.y]\npath = "/m"\n[models.x]\ncontext = 4096\nrepo = "a/b"\n'
        '[server]\nhost = "127.0.0.1"\nport = 8081\n'
    )
    c = parse_manifest(
        '[server]\nport = 8082\n[models.x]\nrepo = "a/b"\ncontext = 4096\n[models.y]\npath = "/m"\n'
    )
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_defaults_and_references() -> None:
    manifest = parse_manifest(GOOD)
    assert isinstance(manifest, Manifest)
    assert manifest.server.host == "127.0.0.1"
    assert manifest.server.port == 8080
    assert manifest.default_alias == "coder"
    assert manifest.server.engine.idle_ttl_seconds == 1800
    assert manifest.models["coder"].source_label == "mlx-community/Qwen3-8B-4bit"


def test_public_bind_with_key_env_is_allowed() -> None:
    manifest = parse_manifest(
        '[server]\nhost = "0.0.0.0"\napi_key_env = "LOCAL_AI_KEY"\n[models.a]\nrepo = "a/b"\n'
    )
    assert manifest.server.api_key_env == "LOCAL_AI_KEY"


def test_gguf_source_label() -> None:
    manifest = parse_manifest(
        '[models.d]\nrepo = "org/X-GGUF"\nfile = "X-Q8_0.gguf"\nrevision = "v1"\nquantize = "q4"\n'
    )
    assert manifest.models["d"].source_label == "org/X-GGUF:X-Q8_0.gguf@v1"


def test_cluster_placement_loads(tmp_path: Path) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_bytes(CLUSTER)
    manifest = load_manifest(path).manifest
    assert manifest.cluster is not None
    assert manifest.cluster.backend == "ring"
    assert manifest.cluster.hosts["mini"].python == "/opt/local-ai/bin/python"
    assert manifest.models["big"].hosts == ["studio", "mini"]
    assert manifest.models["big"].parallel == "pipeline"
    jaccl = CLUSTER.replace(b'rank0 = "studio"', b'rank0 = "studio"\nbackend = "jaccl"')
    jaccl = jaccl.replace(b'"192.168.2.1"', b'"192.168.2.1"\nrdma = { mini = "rdma_en3" }')
    jaccl = jaccl.replace(b'"192.168.2.2"', b'"192.168.2.2"\nrdma = { studio = "rdma_en5" }')
    path.write_bytes(jaccl)
    cluster = load_manifest(path).manifest.cluster
    assert cluster is not None and cluster.hosts["mini"].rdma == {"studio": "rdma_en5"}
