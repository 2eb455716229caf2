# ruff: noqa: E501 (expected plan text is kept verbatim)
"""Planner data cases: manifest + observed state in, plan text out (the rendering is the oracle)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from textwrap import dedent

from local_ai.clients.base import ClientChange
from local_ai.clients.plan import ClientsObserved, plan_clients, resolve_targets
from local_ai.manifest.load import parse_manifest
from local_ai.manifest.models import Manifest
from local_ai.manifest.serving import engine_settings, gateway_settings
from local_ai.manifest.source import ResolvedSource, SourceFile
from local_ai.reconcile.model import (
    InstalledView,
    Kind,
    Observed,
    ServerView,
    SourceView,
    alias_map_hash,
    convert_digest,
    install_fields,
    install_key,
)
from local_ai.reconcile.planner import Options, plan
from local_ai.reconcile.render import render_text, to_json
from local_ai.store.lockfile import Versions, entry_from_resolved
from local_ai.util.change import Change

GIB = 1024**3
C1 = "a" * 40
C2 = "b" * 40

BASE = """
[server]
port = 8080
preload = ["coder"]

[models.coder]
repo = "mlx-community/Coder-4bit"
context = 8192

[models.general]
repo = "Qwen/Qwen3-8B"
quantize = "q4"
context = 4096

[benchmark]
on_apply = false
"""


def manifest(text: str = BASE) -> Manifest:
    return parse_manifest(dedent(text))


def locked(alias: str, m: Manifest, commit: str = C1, **kw: object) -> SourceView:
    spec = m.models[alias]
    fmt = "mlx" if "4bit" in (spec.repo or "") else "gguf" if spec.file else "safetensors"
    source = ResolvedSource(
        alias=alias,
        kind="path" if spec.path else "repo",
        format=fmt,
        files=(
            SourceFile("config.json", 1000, "c" * 64),
            SourceFile("model.safetensors", 2 * GIB, "d" * 64),
        ),
        repo=spec.repo,
        revision=(spec.revision or "main") if spec.repo else None,
        commit=commit if spec.repo else None,
        file=spec.file,
        path=spec.path,
        base_model=kw.pop("base_model", None),  # type: ignore[arg-type]
    )
    facts: dict[str, object] = {
        "source_bits": 4.5 if fmt == "mlx" else 16.0,
        "num_layers": 24,
        "num_kv_heads": 4,
        "head_dim": 128,
    }
    facts.update(kw)
    entry = entry_from_resolved(source, spec, versions=Versions(converter="0"))
    return SourceView(source, entry, **facts)  # type: ignore[arg-type]


def installed(alias: str, m: Manifest, commit: str = C1, present: bool = True) -> InstalledView:
    spec = m.models[alias]
    return InstalledView(
        alias=alias,
        spec_key=install_key(spec),
        spec=install_fields(spec),
        commit=commit,
        location=f"/store/{alias}",
        location_kind="store" if spec.quantize else "hf-cache",
        size_bytes=GIB,
        present=present,
        drift=None if present else "store entry missing on disk",
    )


def running(m: Manifest, commits: dict[str, str | None] | None = None) -> ServerView:
    commits = commits if commits is not None else dict.fromkeys(m.models, C1)
    return ServerView(
        running=True,
        pid=1234,
        gateway=gateway_settings(m),
        engine=engine_settings(m),
        aliases_hash=alias_map_hash(m, commits),
        aliases=tuple(m.models),
    )


def converged(m: Manifest) -> Observed:
    """Everything in the manifest is locked, installed, converted and served."""
    lock = {a: locked(a, m) for a in m.models}
    digests = frozenset(convert_digest(lock[a].source, m.models[a], "0") for a in m.models)
    return Observed(
        state_serial=3,
        installed={a: installed(a, m) for a in m.models},
        lock=lock,
        resolved={},
        unresolved={},
        cached=frozenset(m.models),
        store_digests=digests,
        server=running(m),
        usable_memory=64 * GIB,
        machine="Apple M3 Max (simulated)",
    )


def empty(m: Manifest) -> Observed:
    return Observed(
        state_serial=0,
        installed={},
        lock={},
        resolved={a: locked(a, m) for a in m.models},
        unresolved={},
        cached=frozenset(),
        store_digests=frozenset(),
        server=ServerView(running=False),
        usable_memory=64 * GIB,
        machine="Apple M3 Max (simulated)",
    )


def test_empty_home_builds_everything() -> None:
    m = manifest()
    p = plan(m, empty(m))
    assert render_text(p) == dedent(
        """\
          + model.coder  (new model)
              resolve        mlx-community/Coder-4bit → aaaaaaa in local-ai.lock  [not in local-ai.lock]
              fetch          2 files from mlx-community/Coder-4bit@aaaaaaa, download 2.0 GB
              verify         2 files  [check sha256 against local-ai.lock]
              install        serve the HF cache snapshot as is
          + model.general  (new model)
              resolve        Qwen/Qwen3-8B → aaaaaaa in local-ai.lock  [not in local-ai.lock]
              fetch          2 files from Qwen/Qwen3-8B@aaaaaaa, download 2.0 GB
              verify         2 files  [check sha256 against local-ai.lock]
              convert        safetensors → mlx q4 g64, disk 576.0 MB, peak 2.1 GB
              install        serve the converted model from the store
          + server  (server not running)
              start-server   http://127.0.0.1:8080

        Download 4.0 GB · disk +4.6 GB · peak memory 3.1 GB of 64.0 GB usable
        Plan: 3 to add, 0 to change, 0 to replace, 0 to remove.
        """
    )
    start = p.action("start-server")
    assert set(start.after) == {"install:coder", "install:general"}
    assert p.action("convert:general").depends_on == (
        "resolve:general",
        "fetch:general",
        "verify:general",
    )


def test_converged_is_a_no_op_with_reasons() -> None:
    m = manifest()
    p = plan(m, converged(m))
    assert not p.has_changes
    assert render_text(p) == dedent(
        """\
          = model.coder  (up to date (aaaaaaa, mlx))
          = model.general  (up to date (aaaaaaa, q4))
          = server  (running with this configuration)

        No changes. Everything matches the manifest.
        """
    )


LOCAL = """
[server]
autostart = false

[models.mine]
path = "/models/mine"
quantize = "q8"

[models.raw]
path = "/models/raw"

[benchmark]
on_apply = false
"""


def test_local_paths_say_what_the_lock_records_and_where_they_are() -> None:
    # A path has no commit: the plan names its files and its directory, never "none".
    m = manifest(LOCAL)
    first = render_text(plan(m, empty(m)))
    assert "resolve        /models/mine → 2 files, 2.0 GiB in local-ai.lock" in first, first
    assert "none" not in first, first
    observed = converged(m)
    observed = replace(
        observed,
        installed={a: replace(v, commit=None) for a, v in observed.installed.items()},
        server=running(m, dict.fromkeys(m.models)),
    )
    done = render_text(plan(m, observed))
    assert "= model.mine  (up to date (/models/mine, q8))" in done, done
    assert "= model.raw  (up to date (/models/raw, source precision))" in done, done
    assert "none" not in done, done


def test_reordered_toml_keys_give_an_empty_plan() -> None:
    m = manifest()
    reordered = manifest(
        """
        # same meaning, different order and comments
        [benchmark]
        on_apply = false
        [models.general]
        context = 4096
        quantize = "q4"
        repo = "Qwen/Qwen3-8B"
        [models.coder]
        context = 8192
        repo = "mlx-community/Coder-4bit"
        [server]
        preload = ["coder"]
        port = 8080
        """
    )
    assert (
        reordered.fingerprint() != ""
        and reordered.fingerprint()
        != manifest("""
        [models.x]
        repo = "a/b"
        """).fingerprint()
    )
    p = plan(reordered, converged(m))
    assert not p.has_changes, render_text(p)


def test_quantize_change_rebuilds_exactly_one_model() -> None:
    m = manifest()
    observed = converged(m)
    changed = manifest(BASE.replace('quantize = "q4"', 'quantize = "q6"'))
    p = plan(changed, observed)
    text = render_text(p)
    assert "-/+ model.general  (quantize q4 → q6)" in text
    assert "= model.coder  (up to date" in text
    kinds = [a.kind for a in p.actions]
    assert kinds.count(Kind.CONVERT) == 1
    assert p.action("convert:general").detail == "safetensors → mlx q6 g64"
    assert Kind.FETCH not in kinds  # source files are already cached
    assert Kind.RESTART_ENGINE not in kinds
    assert p.action("reload-aliases").after == ("install:general",)


def test_model_deleted_out_of_band_is_repaired() -> None:
    m = manifest()
    observed = converged(m)
    digest = convert_digest(observed.lock["general"].source, m.models["general"], "0")
    observed = replace(
        observed,
        installed={**observed.installed, "general": installed("general", m, present=False)},
        store_digests=observed.store_digests - {digest},
    )
    p = plan(m, observed)
    assert "-/+ model.general  (store entry missing on disk)" in render_text(p)
    assert {a.id for a in p.actions} == {
        "verify:general",
        "convert:general",
        "install:general",
        "reload-aliases",
    }


def test_engine_setting_change_restarts_engine_only() -> None:
    m = manifest()
    changed = manifest(BASE + "\n[server.engine]\nmax_loaded_models = 3\n")
    p = plan(changed, converged(m))
    assert [a.id for a in p.actions] == ["restart-engine"]
    assert p.actions[0].cause == "server.engine.max_loaded_models 2 → 3"
    assert "~ server  (server.engine.max_loaded_models 2 → 3)" in render_text(p)


def test_alias_setting_change_reloads_only() -> None:
    m = manifest()
    changed = manifest(BASE.replace("context = 8192", "context = 16384"))
    p = plan(changed, converged(m))
    assert [a.id for a in p.actions] == ["reload-aliases"]
    assert "= model.coder  (up to date" in render_text(p)


def test_new_alias_reloads_without_engine_restart() -> None:
    m = manifest()
    bigger = manifest(BASE + '\n[models.fast]\nrepo = "mlx-community/Fast-4bit"\n')
    observed = replace(converged(m), resolved={"fast": locked("fast", bigger)})
    p = plan(bigger, observed)
    ids = [a.id for a in p.actions]
    assert "restart-engine" not in ids and "restart-server" not in ids
    assert p.action("reload-aliases").cause == "aliases changed: +fast"


def test_port_change_restarts_the_server() -> None:
    m = manifest()
    p = plan(manifest(BASE.replace("port = 8080", "port = 8081")), converged(m))
    assert [a.id for a in p.actions] == ["restart-server"]
    assert p.actions[0].cause == "server.port 8080 → 8081"


def test_revision_moved() -> None:
    m = manifest()
    observed = converged(m)
    observed = replace(
        observed,
        lock={**observed.lock, "coder": locked("coder", m, commit=C2)},
        cached=frozenset({"general"}),
    )
    p = plan(m, observed)
    assert "-/+ model.coder  (revision moved aaaaaaa → bbbbbbb)" in render_text(p)
    assert p.action("fetch:coder").download_bytes == 2 * GIB + 1000


def test_revision_change_in_manifest_resolves_again() -> None:
    m = manifest()
    pinned = manifest(
        BASE.replace(
            'repo = "mlx-community/Coder-4bit"',
            'repo = "mlx-community/Coder-4bit"\nrevision = "v2"',
        )
    )
    observed = replace(converged(m), resolved={"coder": locked("coder", pinned, commit=C2)})
    p = plan(pinned, observed)
    assert p.action("resolve:coder").cause == "revision unset → v2"
    assert "-/+ model.coder  (revision unset → v2)" in render_text(p)


def test_extra_files_change_resolves_again_and_frozen_refuses_it() -> None:
    # The lock pins the file list: asking for more files is a new source, as `lock` says too.
    m = manifest()
    more = manifest(BASE.replace('quantize = "q4"', 'quantize = "q4"\nextra_files = ["*.py"]'))
    observed = replace(converged(m), resolved={"general": locked("general", more, commit=C1)})
    p = plan(more, observed)
    assert p.action("resolve:general").cause == "extra_files unset → *.py"
    frozen = plan(more, converged(m), Options(frozen=True))
    assert frozen.errors == (
        "models.general: manifest and local-ai.lock disagree (extra_files unset → *.py); "
        "run `local-ai lock` to update the lock, or apply without --frozen",
    )


def test_a_repo_turned_local_path_says_the_source_kind_moved() -> None:
    m = manifest()
    local = manifest(BASE.replace('repo = "Qwen/Qwen3-8B"', 'path = "/models/qwen"'))
    p = plan(local, converged(m), Options(frozen=True))
    assert p.errors == (
        "models.general: manifest and local-ai.lock disagree (source repo → path); "
        "run `local-ai lock` to update the lock, or apply without --frozen",
    )


def test_frozen_refuses_a_disagreeing_lock() -> None:
    m = manifest()
    changed = manifest(BASE.replace("Qwen/Qwen3-8B", "Qwen/Qwen3-14B"))
    p = plan(changed, converged(m), Options(frozen=True))
    assert p.actions == ()
    assert p.errors == (
        "models.general: manifest and local-ai.lock disagree "
        "(repo Qwen/Qwen3-8B → Qwen/Qwen3-14B); "
        "run `local-ai lock` to update the lock, or apply without --frozen",
    )
    assert render_text(p).endswith("Plan failed: nothing will be changed.\n")


def test_unresolvable_offline_is_an_error_naming_why() -> None:
    m = manifest()
    observed = replace(
        empty(m),
        resolved={},
        unresolved={
            "coder": "offline (HF_HUB_OFFLINE=1) and not in local-ai.lock",
            "general": "repository not found",
        },
    )
    p = plan(m, observed)
    assert p.errors[0] == (
        "models.coder: cannot resolve mlx-community/Coder-4bit: offline (HF_HUB_OFFLINE=1) "
        "and not in local-ai.lock"
    )
    assert not p.has_changes


def test_removed_alias_needs_prune() -> None:
    m = manifest()
    observed = converged(m)
    smaller = manifest(BASE.split("[models.general]")[0] + "[benchmark]\non_apply = false\n")
    kept = plan(smaller, observed)
    assert "= model.general  (not in manifest; `apply --prune` removes it)" in render_text(kept)
    assert [a.id for a in kept.actions] == ["reload-aliases"]
    pruned = plan(smaller, observed, Options(prune=True))
    assert "- model.general  (not in manifest)" in render_text(pruned)
    assert pruned.action("reload-aliases").after == ("remove:general",)
    assert pruned.action("reload-aliases").cause == "aliases changed: -general"


def test_over_budget_is_a_plan_error_with_a_suggestion() -> None:
    m = manifest()
    observed = replace(empty(m), usable_memory=2 * GIB)
    p = plan(m, observed)
    assert p.actions == ()
    assert any(
        e.startswith("models.coder: needs about 2.4 GB (weights + KV cache at 8192 tokens)")
        and "use a lower quantize level or a smaller context" in e
        for e in p.errors
    ), p.errors


def test_preloading_too_much_is_an_error() -> None:
    m = manifest(BASE.replace('preload = ["coder"]', 'preload = ["coder", "general"]'))
    observed = replace(empty(m), usable_memory=int(2.8 * GIB))
    p = plan(m, observed)
    assert any(e.startswith("server.preload: coder, general need") for e in p.errors), p.errors


def test_gguf_requantize_warns_and_names_base_model() -> None:
    m = manifest(
        """
        [models.dev]
        repo = "org/Dev-GGUF"
        file = "Dev-Q4_K_M.gguf"
        quantize = "q4"
        """
    )
    src = locked("dev", m, source_bits=4.8, source_quantization="Q4_K_M", base_model="org/Dev")
    p = plan(m, replace(empty(m), resolved={"dev": src}))
    assert p.warnings == (
        "models.dev: Dev-Q4_K_M.gguf is already Q4_K_M; requantizing it to q4 compounds the "
        "error; the original weights are in org/Dev",
    )
    assert p.action("convert:dev").detail == "gguf → mlx q4 g64"


def test_server_stopped_without_autostart_is_a_reasoned_no_op() -> None:
    m = manifest(BASE.replace("port = 8080", "port = 8080\nautostart = false"))
    observed = replace(converged(m), server=ServerView(running=False))
    p = plan(m, observed)
    assert not p.has_changes
    assert "= server  (server stopped (server.autostart = false))" in render_text(p)


CLIENT_DIRS = {
    "zed.settings": Path("/cfg/zed/settings.json"),
    "claude-code.settings": Path("/cfg/claude/settings.json"),
    "goose.dir": Path("/cfg/goose"),
    "codex.dir": Path("/cfg/codex"),
}


def client_files(m: Manifest, written: Manifest | None = None) -> ClientsObserved:
    """The client files of `m` as read: what local-ai wrote for `written` (a converged machine
    when it is `m`), nothing when `written` is None."""
    targets = resolve_targets(m, CLIENT_DIRS)
    paths = {p: None for roles in targets.values() for p in roles.values()}
    if written is None:
        return ClientsObserved(targets, paths)
    changes = plan_clients(written, None, client_files(written))
    files = paths | {e.path: e.after for c in changes for e in c.edits}
    ledgers = {c.client: c.ledger for c in changes if c.ledger is not None}
    return ClientsObserved(targets, files, ledgers)


def test_client_configs_are_written_after_the_server_and_errors_stop_the_plan() -> None:
    before = manifest(BASE + '[clients.goose]\n[clients.claude_code]\nmodel = "coder"\n')
    m = manifest(BASE + "[clients.zed]\n[clients.goose]\n")
    # Goose as local-ai wrote it, Zed not written yet, Claude Code dropped from the manifest.
    seen = client_files(m, written=before)
    p = plan(m, replace(converged(m), server=ServerView(running=False), clients=seen))
    text = render_text(p)
    assert "  ~ client.zed  (configure Zed for local-ai)" in text
    assert "  = client.goose  (matches the manifest)" in text
    assert (
        "  - client.claude-code  (removed from the manifest: restore what local-ai changed in "
        "Claude Code's settings)" in text
    )
    write = p.action("write-client:zed")
    assert write.after == ("start-server",)
    # The action carries the exact edit it makes, and the JSON form never the file's text.
    assert isinstance(write.params, ClientChange)
    (edit,) = write.params.edits
    assert (edit.path, edit.before) == (CLIENT_DIRS["zed.settings"], None)
    assert '"openai_compatible"' in (edit.after or "")
    shown = next(a for a in to_json(p)["actions"] if a["id"] == "write-client:zed")
    assert shown["params"]["files"] == [
        {"path": "/cfg/zed/settings.json", "action": "create", "backup": False}
    ]
    assert "write-client:goose" not in {a.id for a in p.actions}

    broken = client_files(m)
    broken = replace(broken, files={**broken.files, CLIENT_DIRS["zed.settings"]: '{"a": '})
    failed = plan(m, replace(converged(m), clients=broken))
    assert not failed.actions
    (error,) = failed.errors
    assert error.startswith("client.zed: /cfg/zed/settings.json:1:")
    unread = plan(m, replace(converged(m), clients_error="clients/zed.json: not a record"))
    assert unread.errors == ("clients: clients/zed.json: not a record",)


def test_local_path_model_installs_without_fetch() -> None:
    m = manifest('[models.mine]\npath = "/models/mine"\n[benchmark]\non_apply = false\n')
    src = SourceView(
        ResolvedSource(
            "mine", "path", "mlx", (SourceFile("model.safetensors", 100),), path="/models/mine"
        )
    )
    p = plan(m, replace(empty(m), resolved={"mine": src}))
    assert [a.id for a in p.actions] == ["resolve:mine", "install:mine", "start-server"]
    assert p.action("install:mine").detail == "serve /models/mine"


def test_targets_limit_model_actions() -> None:
    m = manifest()
    p = plan(m, empty(m), Options(targets=("coder",)))
    assert not any(a.resource == "model.general" for a in p.actions)
    assert p.action("start-server").after == ("install:coder",)
    bad = plan(m, empty(m), Options(targets=("nope",)))
    assert bad.errors == ("--target nope: no such alias in the manifest",)


def test_benchmarks_follow_install_and_server() -> None:
    m = manifest(BASE.replace("on_apply = false", "on_apply = true"))
    p = plan(m, empty(m))
    bench = p.action("benchmark:coder")
    assert bench.depends_on == ("install:coder", "start-server")
    assert not any(
        a.kind is Kind.BENCHMARK for a in plan(m, empty(m), Options(benchmark=False)).actions
    )


def test_conform_follows_the_benchmark_with_the_gate_the_plan_decided() -> None:
    from local_ai.reconcile.model import GateParams

    gated = BASE.replace("on_apply = false", "on_apply = true\ngate = true")
    disabled = "[clients.claude_code]\nenabled = false\n"  # never written: nothing to probe
    m = manifest(gated + "[clients.zed]\n[clients.codex]\n" + disabled)
    # Zed not written yet, Codex as written, Goose dropped from the manifest.
    clients = client_files(m, written=manifest(gated + "[clients.codex]\n[clients.goose]\n"))
    p = plan(m, replace(empty(m), clients=clients))
    conform = p.action("conform:coder")
    assert conform.kind is Kind.CONFORM
    assert conform.depends_on == ("install:coder", "start-server", "benchmark:coder")
    assert conform.params == GateParams(True, clients=("zed", "codex"))
    assert p.action("benchmark:coder").params == GateParams(True, floor=None)
    assert "conform        requests and a tool-call round trip of zed, codex" in render_text(p)
    # No configured client, no conform; --skip-benchmark leaves both out.
    assert "conform:coder" not in {a.id for a in plan(m, empty(m)).actions}
    assert p.action("write-client:goose").params.change is Change.DELETE  # type: ignore[union-attr]
    skipped = plan(m, replace(empty(m), clients=clients), Options(benchmark=False))
    assert not any(a.kind in (Kind.BENCHMARK, Kind.CONFORM) for a in skipped.actions)


def test_a_rejected_build_serves_only_when_measured_again_or_ungated() -> None:
    from local_ai.reconcile.model import ServeParams

    def observed(m: Manifest) -> Observed:
        base = converged(m)
        view = replace(base.installed["coder"], rejected="Zed: tool call (coder): no tool call")
        # The server serves the previous generation: not the map the manifest asks for.
        server = replace(base.server, aliases_hash="previous")
        return replace(base, installed={**base.installed, "coder": view}, server=server)

    gated = manifest(BASE.replace("on_apply = false", "on_apply = true\ngate = true"))
    p = plan(gated, observed(gated))
    assert p.action("reload-aliases").params == ServeParams(admit=("coder",))
    assert p.action("benchmark:coder").cause.startswith("kept out of service by benchmark.gate")
    # Not measured: the reload keeps it out of service.
    unmeasured = plan(gated, observed(gated), Options(benchmark=False))
    assert unmeasured.action("reload-aliases").params == ServeParams(admit=())
    # Without the gate the rejection no longer holds.
    open_gate = manifest(BASE.replace("on_apply = false", "on_apply = true"))
    ungated = plan(open_gate, observed(open_gate))
    assert ungated.action("reload-aliases").params == ServeParams(admit=("coder",))
    assert "benchmark:coder" not in {a.id for a in ungated.actions}


def test_plan_json_is_complete_and_stable() -> None:
    m = manifest()
    a, b = plan(m, empty(m)), plan(m, empty(m))
    assert to_json(a) == to_json(b)
    data = to_json(a)
    assert data["summary"] == {"add": 3, "change": 0, "replace": 0, "remove": 0, "blocked": 0}
    assert data["manifest_hash"] == m.fingerprint()
    assert [x["id"] for x in data["actions"]][:2] == ["resolve:coder", "fetch:coder"]


def test_every_action_has_a_cause_and_dependencies_exist() -> None:
    m = manifest(BASE.replace("on_apply = false", "on_apply = true"))
    for observed in (empty(m), converged(m)):
        p = plan(m, observed)
        ids = {a.id for a in p.actions}
        for action in p.actions:
            assert action.cause
            assert set(action.depends_on) <= ids
        for res in p.resources:
            assert res.cause
