"""Hostile and broken input at every boundary (issue 11): manifests, lock files, safetensors
headers, chat templates, Hub listings, and probes of the server's exposure (Host, Origin, API
key, admin token, MLX Omni Server's other routes).

Each case goes through the real CLI (in this process through its entry point, or as a
subprocess) or the real function at the boundary, and must end in its documented error: the
exit code, a message naming the file/key/field, and never a traceback. Corpora asserted elsewhere
are only referenced (docs/reliability.md lists where): tests/test_manifest.py (its corpus is run
through the CLI here too), tests/test_lockfile.py, tests/test_convert_malformed.py (GGUF),
tests/test_hub_faults.py and tests/test_server_api.py.
"""

from __future__ import annotations

import ast
import json
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_ai.convert import chat_template
from local_ai.convert.chat_template import SAMPLE_MESSAGES, TemplateError, render_chat_template
from local_ai.convert.safetensors_header import check_safetensors
from local_ai.errors import ExitCode, IntegrityError, MalformedFileError
from local_ai.hub import client
from local_ai.hub.fetch import fetch
from local_ai.store.lockfile import load_lock, resolved_from_entry
from tests.clirunner import run_cli
from tests.harness import tinymodels as tm
from tests.harness.fakehub import FakeHub
from tests.hub_repos import MLX_REPO, add_mlx_repo, run_inprocess
from tests.server_helpers import Daemon, build_chat_model, free_port, raw_status, write_manifest
from tests.test_manifest import BAD_MANIFESTS

SHA = "a" * 40


def assert_clean(code: int, err: str, expected_code: int, needle: str) -> None:
    assert code == expected_code, err
    assert needle in err, err
    assert "Traceback" not in err and "internal error" not in err, err


# --- (a) manifests ------------------------------------------------------------------------------

REPO_A = b'[models.a]\nrepo = "a/b"\n'
# (id, file bytes, part of the message)
MANIFESTS: list[tuple[str, bytes, str]] = [
    ("binary-garbage", bytes(range(256)) * 4, "is not valid UTF-8"),
    ("utf16", REPO_A.decode().encode("utf-16"), "is not valid UTF-8"),
    ("nul-bytes", b"\x00\x00\x00\x00", "invalid TOML"),
    ("json", b'{"models": {"a": {"repo": "a/b"}}}', "looks like JSON, but it must be TOML"),
    ("nul-after-value", b'[models.a]\nrepo = "a/b"\x00\n', "invalid TOML"),
    ("over-1-mib", b"# " + b"x" * (2 << 20) + b"\n", "a manifest is at most 1048576 bytes"),
    ("alias-dotdot-slash", b'[models."../x"]\nrepo = "a/b"\n', "alias '../x' may use letters"),
    ("alias-dotdot", b'[models.".."]\nrepo = "a/b"\n', "alias '..' may use letters"),
    ("alias-newline", b'[models."a\\n"]\nrepo = "a/b"\n', "alias 'a\\n' may use"),
    ("alias-bell", b'[models."a\\u0007b"]\nrepo = "a/b"\n', "alias 'a\\x07b' may use"),
    ("alias-empty", b'[models.""]\nrepo = "a/b"\n', "alias '' may use"),
    ("alias-65-chars", b"[models." + b"a" * 65 + b']\nrepo = "a/b"\n', "up to 64 characters"),
    ("repo-dotdot", b'[models.a]\nrepo = "org/.."\n', "is not a HuggingFace repo id"),
    ("repo-traversal", b'[models.a]\nrepo = "org/x/../../y"\n', "is not a HuggingFace repo id"),
    ("repo-newline", b'[models.a]\nrepo = "org/x\\n"\n', "is not a HuggingFace repo id"),
    (
        "revision-traversal",
        b'[models.a]\nrepo = "org/x"\nrevision = "../../../etc/passwd"\n',
        "models.a.revision: '../../../etc/passwd' is not a branch, tag or commit name",
    ),
    (
        "revision-nul",
        b'[models.a]\nrepo = "org/x"\nrevision = "main\\u0000"\n',
        "is not a branch, tag or commit name",
    ),
    ("revision-empty", b'[models.a]\nrepo = "org/x"\nrevision = ""\n', "is not a branch"),
    ("path-nul", b'[models.a]\npath = "/tmp/\\u0000x"\n', "models.a.path: '/tmp/\\x00x' contains"),
    ("name-escape", b'[models.a]\nrepo = "a/b"\nname = "\\u001b[31mred"\n', "control character"),
    ("file-backslash", b'[models.a]\nrepo = "a/b"\nfile = "..\\\\x.gguf"\n', "inside the repo"),
    ("file-nul", b'[models.a]\nrepo = "a/b"\nfile = "a\\u0000.gguf"\n', "control character"),
    (
        "api-key-crlf",
        b'[server]\napi_key = "abcdefgh\\r\\nX-Evil: 1"\n' + REPO_A,
        "printable characters without spaces",
    ),
    ("port-10e29", b"[server]\nport = 99999999999999999999999999999\n" + REPO_A, "at most 65535"),
    ("port-float", b"[server]\nport = 8080.0\n" + REPO_A, "expected an integer, got a number"),
    ("context-inf", REPO_A + b"context = inf\n", "expected an integer, got a number (inf)"),
    ("min-tps-inf", REPO_A + b"min_tokens_per_second = inf\n", "must be a finite number"),
    ("min-tps-nan", REPO_A + b"min_tokens_per_second = nan\n", "must be a finite number"),
    ("version-10e23", b"version = 100000000000000000000000\n" + REPO_A, "is too large"),
    ("models-array", b'[[models]]\nrepo = "a/b"\n', "expected a table, got an array"),
    ("host-lan-no-key", b'[server]\nhost = "192.168.1.5"\n' + REPO_A, "is not loopback"),
    ("host-ipv6-any-no-key", b'[server]\nhost = "::"\n' + REPO_A, "is not loopback"),
    ("host-v4-mapped-no-key", b'[server]\nhost = "::ffff:127.0.0.1"\n' + REPO_A, "not loopback"),
    ("host-suffix-no-key", b'[server]\nhost = "localhost.evil.example"\n' + REPO_A, "loopback"),
    ("host-empty-no-key", b'[server]\nhost = ""\n' + REPO_A, "is not loopback"),
    ("duplicate-quoted-alias", REPO_A + b'[models."a"]\nrepo = "c/d"\n', "duplicate key"),
]


@pytest.mark.parametrize(("content", "needle"), [pytest.param(c, n, id=i) for i, c, n in MANIFESTS])
def test_hostile_manifest_through_the_cli(
    content: bytes, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_bytes(content)
    code, _, err = run_inprocess(capsys, "validate", "--config", str(path))
    assert_clean(code, err, ExitCode.CONFIG, needle)
    assert str(path) in err


@pytest.mark.parametrize(
    ("content", "needles"), [pytest.param(c, n, id=i) for i, c, _, _, n in BAD_MANIFESTS]
)
def test_manifest_corpus_through_the_cli(
    content: bytes, needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tests/test_manifest.py checks where each problem points; here, what the user sees."""
    path = tmp_path / "local-ai.toml"
    path.write_bytes(content)
    code, _, err = run_inprocess(capsys, "validate", "--config", str(path))
    assert_clean(code, " ".join(err.split()), ExitCode.CONFIG, needles[0])


def test_manifest_with_a_byte_order_mark_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_bytes(b"\xef\xbb\xbf" + REPO_A)
    code, out, err = run_inprocess(capsys, "validate", "--config", str(path))
    assert code == 0, err
    assert "valid: 1 model (a)" in " ".join(out.split())


def test_public_bind_without_a_key_is_refused_by_server_start(
    tmp_path: Path, isolated_home: Path
) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_text('[server]\nhost = "0.0.0.0"\n[models.a]\npath = "/m"\n')
    result = run_cli("server", "start", "--config", str(path))
    err = " ".join(result.stderr.split())
    assert_clean(result.returncode, err, ExitCode.CONFIG, "host '0.0.0.0' is not loopback")
    assert not (isolated_home / "run" / "server.json").exists()  # nothing was started


def test_nul_in_a_path_is_a_manifest_error_for_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was "internal error: ValueError: embedded null byte" once plan touched the path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "local-ai.toml"
    path.write_bytes(b'[models.a]\npath = "/tmp/\\u0000x"\n')
    code, _, err = run_inprocess(capsys, "plan", "--config", str(path))
    assert_clean(code, " ".join(err.split()), ExitCode.CONFIG, "contains a control character")


@pytest.mark.parametrize("value", ["key\nX-Injected: 1", "k\x1b[2Jey", "two words", "clé"])
def test_public_bind_with_a_key_variable_unfit_for_a_header_is_refused(
    value: str,
    tmp_path: Path,
    isolated_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_AI_BAD_KEY", value)
    path = tmp_path / "local-ai.toml"
    path.write_text(
        '[server]\nhost = "0.0.0.0"\napi_key_env = "LOCAL_AI_BAD_KEY"\n[models.a]\npath = "/m"\n'
    )
    code, _, err = run_inprocess(capsys, "server", "start", "--config", str(path))
    flat = " ".join(err.split())
    assert_clean(code, flat, ExitCode.CONFIG, "LOCAL_AI_BAD_KEY (server.api_key_env) must be")
    assert value not in err  # the key itself is never echoed
    assert not (isolated_home / "run" / "server.json").exists()


def test_public_bind_with_an_unset_key_variable_is_refused(
    tmp_path: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_text(
        '[server]\nhost = "0.0.0.0"\napi_key_env = "LOCAL_AI_UNSET_KEY"\n[models.a]\npath = "/m"\n'
    )
    code, _, err = run_inprocess(capsys, "server", "start", "--config", str(path))
    assert_clean(
        code, " ".join(err.split()), ExitCode.CONFIG, "LOCAL_AI_UNSET_KEY, which is not set"
    )
    assert not (isolated_home / "run" / "server.json").exists()


# --- (b) lock files -----------------------------------------------------------------------------

LOCK_HEAD = f"""version = 1
[models.a]
kind = "repo"
format = "mlx"
repo = "org/x"
commit = "{SHA}"
[models.a.versions]
converter = "1"
"""


def _file(name: str, size: int = 1, extra: str = "") -> str:
    return f"[[models.a.files]]\nname = {json.dumps(name)}\nsize = {size}\n{extra}"


LOCKS: list[tuple[str, bytes, str]] = [
    ("json-not-toml", b'{"version": 1, "models": {}}', "looks like JSON, but it must be TOML"),
    ("binary-garbage", bytes(range(256)), "is not valid UTF-8"),
    ("truncated", LOCK_HEAD.encode()[:60], "invalid TOML"),
    ("version-2", b"version = 2\n", "lock file version 2 is not supported"),
    ("version-string", b'version = "1"\n', "version"),
    ("commit-not-sha", LOCK_HEAD.replace(SHA, "../../x").encode(), "models.a.commit"),
    ("name-traversal", (LOCK_HEAD + _file("../../etc/passwd")).encode(), "'..' path component"),
    ("name-absolute", (LOCK_HEAD + _file("/etc/passwd")).encode(), "is an absolute path"),
    ("name-control", (LOCK_HEAD + _file("a\u0007b")).encode(), "contains control characters"),
    ("name-backslash", (LOCK_HEAD + _file("..\\x")).encode(), "contains a backslash"),
    ("name-encoded", (LOCK_HEAD + _file("a/%2e%2e/b")).encode(), "URL-encoded"),
    ("listed-twice", (LOCK_HEAD + _file("x") + _file("x")).encode(), "a file is listed twice"),
    ("size-negative", (LOCK_HEAD + _file("x", -1)).encode(), "models.a.files[0].size"),
    ("sha256-malformed", (LOCK_HEAD + _file("x", 1, 'sha256 = "zz"\n')).encode(), "sha256"),
    (
        "gguf-file-traversal",
        LOCK_HEAD.replace('"mlx"', '"gguf"\nfile = "../x.gguf"').encode(),
        "'..'",
    ),
    ("unknown-key", (LOCK_HEAD + "surprise = 1\n").encode(), "unknown key"),
    ("alias-traversal", LOCK_HEAD.replace("models.a", 'models."../a"').encode(), "is not valid"),
    ("over-16-mib", b"# " + b"x" * (17 << 20), "a lock file is at most"),
]


@pytest.mark.parametrize(("content", "needle"), [pytest.param(c, n, id=i) for i, c, n in LOCKS])
def test_hostile_lock_file_through_plan(
    content: bytes,
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text('[models.a]\nrepo = "org/x"\n')
    lock = tmp_path / "local-ai.lock"
    lock.write_bytes(content)
    code, _, err = run_inprocess(capsys, "plan", "--config", str(manifest))
    assert_clean(code, " ".join(err.split()), ExitCode.CONFIG, needle)
    assert str(lock) in err
    if "JSON" in needle:  # the advice is the command that rewrites the lock
        assert "local-ai lock" in err


@pytest.mark.parametrize("lie", ["sha256", "size"])
def test_lock_that_pins_other_bytes_fails_the_fetch(
    lie: str, fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock edited to pin a different hash (or size) than the hub's bytes: the fetch refuses
    them and leaves nothing unverified in the cache."""
    monkeypatch.setattr(client, "RETRY_DELAYS", (0.0, 0.0))
    add_mlx_repo(fake_hub)
    commit = fake_hub.repo_sha(MLX_REPO)
    blob = fake_hub.entry(MLX_REPO, "model.safetensors").blob
    sha256 = "0" * 64 if lie == "sha256" else blob.sha256
    size = blob.size + 7 if lie == "size" else blob.size
    path = tmp_path / "local-ai.lock"
    path.write_text(
        LOCK_HEAD.replace("org/x", MLX_REPO).replace(SHA, commit)
        + _file("model.safetensors", size, f'sha256 = "{sha256}"\n')
    )
    resolved = resolved_from_entry("a", load_lock(path).models["a"])
    with pytest.raises(IntegrityError, match=r"model\.safetensors") as raised:
        fetch(resolved)
    assert raised.value.hint
    snapshot = client.cache_dir() / f"models--{MLX_REPO.replace('/', '--')}" / "snapshots"
    assert not list(snapshot.rglob("model.safetensors"))
    assert not list(client.cache_dir().rglob("*.incomplete"))


# --- (c) safetensors headers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_safetensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tm.build_model(tmp_path_factory.mktemp("st") / "m", "qwen3")
    return model / "model.safetensors"


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header: dict[str, Any], body: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def _edit(change: Callable[[dict[str, Any], str], None]) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        header, body = _split(data)
        first = sorted(k for k in header if k != "__metadata__")[0]
        change(header, first)
        return _join(header, body)

    return mutate


def _set(field: str, value: Any) -> Callable[[dict[str, Any], str], None]:
    return lambda h, k: h[k].__setitem__(field, value)


def _second_overlaps(h: dict[str, Any], k: str) -> None:
    other = sorted(n for n in h if n != "__metadata__")[1]
    begin, end = h[other]["data_offsets"]
    start = h[k]["data_offsets"][0]  # the second tensor moved onto the first one's bytes
    h[other]["data_offsets"] = [start, start + end - begin]


def _header_len(value: int) -> Callable[[bytes], bytes]:
    return lambda d: struct.pack("<Q", value) + d[8:]


SAFETENSORS: list[tuple[str, Callable[[bytes], bytes], str, str]] = [
    ("empty", lambda d: b"", "header length", "shorter than 8 bytes"),
    ("length-beyond-file", _header_len(1 << 22), "header length", "runs past the end"),
    ("length-huge", _header_len((1 << 64) - 1), "header length", "exceeds the limit"),
    ("header-not-json", lambda d: struct.pack("<Q", 5) + b"{nope", "header", "not valid JSON"),
    ("header-array", lambda d: _join([], b""), "header", "not a JSON object"),  # type: ignore[arg-type]
    ("dtype-unknown", _edit(_set("dtype", "F99")), ".dtype", "unknown dtype 'F99'"),
    ("shape-mismatch", _edit(_set("shape", [100, 100])), ".shape", "needs 40000 bytes"),
    ("shape-negative", _edit(_set("shape", [-1, 64])), ".shape", "is not a list of sizes"),
    ("shape-huge", _edit(_set("shape", [1 << 50, 8])), ".shape", "is not a list of sizes"),
    ("offsets-reversed", _edit(_set("data_offsets", [16, 0])), ".data_offsets", "[begin, end]"),
    ("offsets-past-data", _edit(_set("data_offsets", [0, 1 << 40])), ".data_offsets", "past"),
    ("offsets-overlap", _edit(_second_overlaps), ".data_offsets", "overlaps another"),
    ("extra-field", _edit(_set("code", "import os")), "tensor", "exactly dtype, shape"),
    (
        "metadata-not-strings",
        _edit(lambda h, k: h.__setitem__("__metadata__", {"a": 1})),
        "__metadata__",
        "strings",
    ),
    ("trailing-bytes", lambda d: d + b"\0" * 64, "data", "are not indexed"),
]


@pytest.mark.parametrize(
    ("mutate", "field", "words"), [pytest.param(m, f, w, id=i) for i, m, f, w in SAFETENSORS]
)
def test_hostile_safetensors_header(
    mutate: Callable[[bytes], bytes],
    field: str,
    words: str,
    valid_safetensors: Path,
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(mutate(valid_safetensors.read_bytes()))
    with pytest.raises(MalformedFileError) as raised:
        check_safetensors(path)
    assert raised.value.path == path
    assert field in raised.value.field and words in raised.value.problem, raised.value


def test_valid_safetensors_passes(valid_safetensors: Path) -> None:
    assert "model.embed_tokens.weight" in check_safetensors(valid_safetensors)


def test_hostile_safetensors_through_convert(valid_safetensors: Path, tmp_path: Path) -> None:
    """Before the header check mlx's loader raised a bare RuntimeError: an "internal error"."""
    source = tmp_path / "src"
    shutil.copytree(valid_safetensors.parent, source)
    weights = source / "model.safetensors"
    weights.write_bytes(_edit(_set("dtype", "F99"))(weights.read_bytes()))
    result = run_cli("models", "convert", str(source), "-q", "q4")
    needle = f"{weights}: tensor 'model.embed_tokens.weight'.dtype: unknown dtype 'F99'"
    assert_clean(result.returncode, result.stderr, ExitCode.ERROR, needle)


# --- (d) chat templates -------------------------------------------------------------------------

TEMPLATES: list[tuple[str, str, str]] = [
    ("mro", "{{ ''.__class__.__mro__ }}", "unsafe"),
    ("subclasses", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("cycler-globals", "{{ cycler.__init__.__globals__ }}", "unsafe"),
    ("joiner-os", "{{ joiner.__init__.__globals__.os }}", "unsafe"),
    ("lipsum-popen", "{{ lipsum.__globals__['os'].popen('id').read() }}", "unsafe"),
    ("self-globals", "{{ self.__init__.__globals__ }}", "unsafe"),
    ("config", "{{ config.items() }}", "'config' is undefined"),
    ("import", "{% import 'os' as os %}{{ os }}", "no loader"),
    ("include-file", "{% include '/etc/passwd' %}", "no loader"),
    ("mutate-messages", "{{ messages.append(1) }}", "unsafe"),
    ("range-1e12", "{{ range(10**12)|list }}", "MAX_RANGE"),
    (
        "nested-loops",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "loop iterations",
    ),
    (
        "loops-over-a-set-range",
        "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% for c in r %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "loop iterations",
    ),
    ("string-times-1e10", "{{ 'x' * 10**10 }}", "too large"),
    ("list-times-1e10", "{{ ([1] * 100000) * 100000 }}", "too large"),
    ("power-tower", "{{ 2 ** (2 ** 40) }}", "too large"),
    (
        "doubling-concat",
        "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s }}",
        "larger than",
    ),
    (
        "doubling-filter",
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s|replace('a', 'aa') %}{% endfor %}{{ ns.s }}",
        "larger than",
    ),
    ("recursive-macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "Recursion"),
    ("recursive-loop", "{% for x in [[1]] recursive %}{{ loop([x, x]) }}{% endfor %}", "Recursion"),
]


@pytest.mark.parametrize(("template", "words"), [pytest.param(t, w, id=i) for i, t, w in TEMPLATES])
def test_hostile_chat_template_does_not_run_or_hang(
    template: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tenth of the budgets (2M steps, 64 Mi items) keeps these fast; the daemon test below
    # runs a loop against the real ones.
    monkeypatch.setattr(chat_template, "MAX_STEPS", 200_000)
    monkeypatch.setattr(chat_template, "MAX_SIZE", 8 << 20)
    started = time.monotonic()
    with pytest.raises(TemplateError, match=words):
        render_chat_template(template, SAMPLE_MESSAGES, add_generation_prompt=True)
    assert time.monotonic() - started < 8  # the budget stops it, not the test's patience


def test_real_templates_still_render() -> None:
    for arch in ("qwen3", "llama"):
        text = render_chat_template(
            tm.chat_template(arch), SAMPLE_MESSAGES, add_generation_prompt=True
        )
        assert "Reverse a list in Python." in text
    generation = (
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    assert render_chat_template(generation, SAMPLE_MESSAGES[:1]) == SAMPLE_MESSAGES[0]["content"]


# --- (e) Hub responses --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a\x1bb", "..\\x"])
def test_hostile_hub_names_through_lock(
    name: str, fake_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tests/test_hub_faults.py refuses these at resolve(); here, what `local-ai lock` says."""
    add_mlx_repo(fake_hub)
    fake_hub.inject("hostile_names", names=(name,))
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(f'[models.a]\nrepo = "{MLX_REPO}"\n')
    code, _, err = run_inprocess(capsys, "lock", "--config", str(manifest))
    assert_clean(code, " ".join(err.split()), ExitCode.ERROR, "nothing was downloaded")
    assert repr(name) in err.replace("\n", "") or name.encode("unicode_escape").decode() in err
    assert not (tmp_path / "local-ai.lock").exists()


# --- the server: exposure probes and a hostile template at serve time ----------------------------

API_KEY = "probe-key-0123456789"
ALLOWED = "http://allowed.example:3000"
LOOP_TEMPLATE = (
    "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}"
)
MRO_TEMPLATE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"


def _with_template(source: Path, out: Path, template: str) -> Path:
    shutil.copytree(source, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("exposure")
    tiny = build_chat_model(root / "tiny")
    models = {
        "tiny": tiny,
        "loop": _with_template(tiny, root / "loop", LOOP_TEMPLATE),
        "mro": _with_template(tiny, root / "mro", MRO_TEMPLATE),
    }
    port = free_port()
    manifest = write_manifest(
        root,
        port=port,
        models=models,
        context=2048,
        server_extra='api_key_env = "LOCAL_AI_PROBE_KEY"\n'
        f'cors_origins = ["{ALLOWED}"]\npreload = ["tiny"]',
    )
    d = Daemon(root / "home", manifest, port, extra_env={"LOCAL_AI_PROBE_KEY": API_KEY})
    with d.running():
        yield d


@pytest.fixture(scope="module")
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=daemon.url, headers=auth, timeout=30, trust_env=False) as c:
        yield c


def host_status(port: int, host_line: str, path: str = "/health") -> int:
    return raw_status(port, f"GET {path} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n".encode())


def test_dns_rebinding_host_values(daemon: Daemon) -> None:
    """tests/test_server_api.py refuses evil.example (with/without port), 127.0.0.1.evil.example,
    an empty Host and none; these are the other forms."""
    port = daemon.port
    allowed = [f"LOCALHOST:{port}", f"[::1]:{port}", "[::1]", "127.0.0.1", f"LocalHost:{port}"]
    for host in allowed:
        assert host_status(port, f"Host: {host}\r\n") == 200, host
    refused = [
        f"[::ffff:127.0.0.1]:{port}",
        f"[0:0:0:0:0:0:0:1]:{port}",
        f"::1:{port}",
        f"localhost.:{port}",
        f"127.0.0.1:{port + 1}",
        f"evil.example@127.0.0.1:{port}",
        f"127.0.0.1:{port}.evil.example",
        f"2130706433:{port}",  # 127.0.0.1 as one number
        f"0x7f.0.0.1:{port}",
        f"EVIL.EXAMPLE:{port}",
    ]
    for host in refused:
        assert host_status(port, f"Host: {host}\r\n") == 403, host
        assert host_status(port, f"Host: {host}\r\n", "/v1/models") == 403, host


FOREIGN = ["http://evil.example", "null", "http://127.0.0.1:1", "https://allowed.example:3000"]
STATE_CHANGING = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/anthropic/v1/messages"),
    ("POST", "/anthropic/v1/messages/count_tokens"),
    ("POST", "/api/load"),
    ("POST", "/api/admin/reload"),
    ("POST", "/api/admin/restart-engine"),
    ("DELETE", "/v1/models/tiny"),
]


def test_foreign_origin_is_refused_on_state_changing_and_admin_routes(
    daemon: Daemon, http: httpx.Client
) -> None:
    token = {"authorization": f"Bearer {daemon.token()}"}
    pid = daemon.pidfile()["engine_pid"]
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    for method, path in STATE_CHANGING:
        extra = token if path.startswith("/api/admin/") else {}
        for origin in FOREIGN:
            response = http.request(method, path, json=body, headers={"origin": origin, **extra})
            assert response.status_code == 403, (method, path, origin, response.text)
            assert "origin" in response.text
    assert daemon.pidfile()["engine_pid"] == pid  # restart-engine never ran
    own = http.post("/v1/chat/completions", json=body, headers={"origin": daemon.url})
    assert own.status_code == 200, own.text


def test_api_key_on_every_api_route(daemon: Daemon) -> None:
    """tests/test_server_api.py checks GET /v1/models and /anthropic/v1/models; here the POST
    routes of both APIs, each header, and near-miss keys."""
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    wrong = [
        {},
        {"authorization": f"Bearer {API_KEY[:-1]}"},
        {"authorization": f"Bearer {API_KEY}x"},
        {"authorization": "Bearer"},
        {"authorization": f"Basic {API_KEY}"},
        {"authorization": API_KEY},
        {"x-api-key": API_KEY.upper()},
        {"x-api-key": ""},
        {"api-key": API_KEY},
        {"x-api-key": "wrong", "authorization": f"Bearer {API_KEY}"},
    ]
    routes = [
        "/v1/chat/completions",
        "/anthropic/v1/messages",
        "/anthropic/v1/messages/count_tokens",
        "/api/load",
    ]
    with httpx.Client(base_url=daemon.url, timeout=30, trust_env=False) as anon:
        for path in routes:
            for headers in wrong:
                response = anon.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
            for good in ({"authorization": f"Bearer {API_KEY}"}, {"x-api-key": API_KEY}):
                response = anon.post(path, json=body, headers=good)
                assert response.status_code == 200, (path, good, response.text)
        error = anon.post("/anthropic/v1/messages", json=body).json()
        assert error["type"] == "error" and error["error"]["type"] == "authentication_error"


def test_admin_api_refuses_anything_but_the_instance_token(
    daemon: Daemon, http: httpx.Client
) -> None:
    """tests/test_server_api.py sends no token; here wrong ones, the API key, other headers."""
    token = daemon.token()
    pid = daemon.pidfile()["engine_pid"]
    wrong = [
        {"authorization": f"Bearer {API_KEY}"},  # the API key is not the admin token
        {"authorization": f"Bearer {token[:-1]}"},
        {"authorization": f"Bearer {token}0"},
        {"authorization": token},
        {"x-api-key": token},
        {"authorization": "Bearer"},
    ]
    with httpx.Client(base_url=daemon.url, timeout=30, trust_env=False) as anon:
        for path in ("/api/admin/reload", "/api/admin/restart-engine", "/api/admin/nothing"):
            for headers in wrong:
                response = anon.post(path, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
        assert (
            anon.get("/api/admin/reload", headers={"authorization": f"Bearer {token}"}).status_code
            == 404
        )
        listed = anon.get("/api/status", headers={"authorization": f"Bearer {API_KEY}"}).json()
        assert token not in json.dumps(listed)  # the instance token never leaks
    assert daemon.pidfile()["engine_pid"] == pid
    assert (
        http.post("/api/admin/reload", headers={"authorization": f"Bearer {token}"}).status_code
        == 200
    )


def omni_routes() -> list[tuple[str, str]]:
    """Every (method, path) MLX Omni Server's routers declare, read from the installed package
    (its modules are not imported: the TTS/STT/image ones need libraries this engine lacks)."""
    import mlx_omni_server

    root = Path(mlx_omni_server.__file__).parent
    prefixes = {"anthropic/router.py": "/anthropic"}
    routes = []
    for source in sorted(root.rglob("*.py")):
        prefix = next((p for s, p in prefixes.items() if source.as_posix().endswith(s)), "")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method = node.func.attr
                owner = node.func.value
                if (
                    method in ("get", "post", "put", "patch", "delete")
                    and isinstance(owner, ast.Name)
                    and owner.id in ("router", "app")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    routes.append((method.upper(), prefix + node.args[0].value))
    return sorted(set(routes))


SERVED = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/anthropic/v1/messages"),
    ("GET", "/v1/models"),
    ("GET", "/anthropic/v1/models"),
    ("GET", "/v1/models/{model_id:path}"),  # our alias lookup, not Omni's cache scan
}


def test_omni_extra_routes_are_not_reachable(daemon: Daemon, http: httpx.Client) -> None:
    routes = [r for r in omni_routes() if r not in SERVED]
    paths = {p for _, p in routes}
    for expected in ("/v1/audio/speech", "/v1/images/generations", "/v1/embeddings"):
        assert expected in paths, paths  # the scan found Omni's routes
    assert ("DELETE", "/v1/models/{model_id:path}") in routes
    tiny_dir = daemon.manifest.parent / "tiny"
    before = sorted(p.name for p in tiny_dir.iterdir())
    body = {"model": "tiny", "input": "hi", "prompt": "hi", "messages": []}
    for method, path in routes:
        for model_id in ("tiny", str(tiny_dir)):
            url = path.replace("{model_id:path}", model_id)
            response = http.request(method, url, json=body)
            assert response.status_code in (404, 405), (method, url, response.text)
    assert http.get("/v1/models/tiny").status_code == 200  # nothing was deleted
    assert sorted(p.name for p in tiny_dir.iterdir()) == before
    assert http.get("/health").json()["status"] == "ready"


def test_hostile_model_template_at_serve_time(http: httpx.Client) -> None:
    """A served model whose chat template loops for ever, or reaches for Python internals: the
    request fails with the reason, quickly; the server and the other models stay fine."""
    messages = [{"role": "user", "content": "hi"}]
    # The loop meets the step budget, or on a loaded machine first the 10 s budget: both bound it.
    loop_reasons = ("loop iterations", "the template ran for more than")
    for alias, reasons in (("loop", loop_reasons), ("mro", ("unsafe",))):
        started = time.monotonic()
        counted = http.post(
            "/anthropic/v1/messages/count_tokens", json={"model": alias, "messages": messages}
        )
        assert time.monotonic() - started < 30
        assert counted.status_code == 500, counted.text
        assert any(r in counted.text for r in reasons), counted.text
        chat = http.post(
            "/v1/chat/completions", json={"model": alias, "messages": messages, "max_tokens": 2}
        )
        assert chat.status_code == 500 and any(r in chat.text for r in reasons), chat.text
    assert http.get("/health").json()["status"] == "ready"
    fine = http.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 2}
    )
    assert fine.status_code == 200, fine.text
