# ruff: noqa: E501 (expected plan text is kept verbatim)
"""Cluster planning as data cases: manifest + observed hosts in, plan text out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from textwrap import dedent

import pytest

from local_ai.cluster.observe import (
    HostReport,
    host_commands,
    report_script,
    shell_path,
    ssh_argv,
    ssh_to,
)
from local_ai.hardware import simulated
from local_ai.manifest.load import parse_manifest
from local_ai.manifest.models import ClusterHost, Manifest
from local_ai.manifest.serving import engine_settings, gateway_settings
from local_ai.manifest.source import ResolvedSource, SourceFile
from local_ai.reconcile.cluster import pipeline_layers
from local_ai.reconcile.model import (
    CopyParams,
    Observed,
    ReleaseParams,
    ServerView,
    SourceView,
    served_digest,
)
from local_ai.reconcile.planner import Options, plan
from local_ai.reconcile.render import render_text
from local_ai.reconcile.serving import group_of, removed_hosts, write_hostfiles
from local_ai.server.aliases import AliasEntry, AliasMap, GroupEntry
from local_ai.store.lockfile import Versions, entry_from_resolved
from local_ai.store.state import InstalledModel

GIB = 1024**3
C1 = "a" * 40
VERSIONS = (("local-ai", "0.1.0"), ("mlx", "0.31.2"), ("mlx-lm", "0.31.3"))

CLUSTER = """
[cluster]
rank0 = "studio"
[cluster.hosts.studio]
address = "10.0.0.1"
[cluster.hosts.mini]
ssh = "me@mini.local"
address = "10.0.0.2"

[models.big]
repo = "mlx-community/Big-4bit"
context = 8192
hosts = ["studio", "mini"]
parallel = "pipeline"

[models.coder]
repo = "mlx-community/Coder-4bit"
context = 8192

[server]
autostart = false

[benchmark]
on_apply = false
"""


def manifest(text: str = CLUSTER) -> Manifest:
    return parse_manifest(dedent(text))


def source(alias: str, m: Manifest, *, gib: int, layers: int = 60, kv_heads: int = 8) -> SourceView:
    spec = m.models[alias]
    files = (SourceFile("model.safetensors", gib * GIB, "d" * 64),)
    pinned = ResolvedSource(alias, "repo", "mlx", files, repo=spec.repo, revision="main", commit=C1)
    return SourceView(
        pinned,
        entry_from_resolved(pinned, spec, versions=Versions(converter="0")),
        source_bits=4.5,
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=128,
    )


def host(
    name: str,
    gb: int,
    *,
    digests: tuple[str, ...] = (),
    versions: tuple[tuple[str, str | None], ...] = VERSIONS,
) -> HostReport:
    return HostReport(
        name,
        reachable=True,
        hardware=simulated(gb, f"Apple M3 Ultra ({name})"),
        free_disk=2000 * GIB,
        python="3.11.9",
        executable="/opt/local-ai/bin/python",
        versions=versions,
        store=f"/{name}/store",
        digests=digests,
    )


def observed(
    m: Manifest, hosts: dict[str, HostReport], *, big_gib: int = 200, **kw: int
) -> Observed:
    resolved = {"big": source("big", m, gib=big_gib, **kw), "coder": source("coder", m, gib=4)}
    return Observed(
        state_serial=0,
        installed={},
        lock={},
        resolved=resolved,
        unresolved={},
        cached=frozenset(resolved),
        store_digests=frozenset(),
        server=ServerView(running=False),
        usable_memory=hosts["studio"].hardware.usable_memory_bytes
        if hosts["studio"].hardware
        else 0,
        machine="studio",
        hosts=hosts,
    )


def test_pipeline_split_follows_mlx_lm() -> None:
    assert pipeline_layers(60, 2) == [range(30, 60), range(30)]
    assert pipeline_layers(6, 3) == [range(4, 6), range(2, 4), range(2)]
    # mlx-lm 0.31 leaves layer 30 of 61 to no rank (checked against PipelineMixin.pipeline).
    assert pipeline_layers(61, 2) == [range(31, 61), range(30)]


@pytest.mark.parametrize(("layers", "ranks"), [(60, 2), (61, 2), (8, 3), (2, 2), (94, 4)])
def test_pipeline_split_matches_the_installed_mlx_lm(layers: int, ranks: int) -> None:
    from mlx_lm.models.pipeline import PipelineMixin

    class Group:
        def __init__(self, rank: int) -> None:
            self._rank = rank

        def rank(self) -> int:
            return self._rank

        def size(self) -> int:
            return ranks

    for rank, expected in enumerate(pipeline_layers(layers, ranks)):
        model = PipelineMixin()
        model.layers = list(range(layers))  # type: ignore[attr-defined]
        model.pipeline(Group(rank))
        ran = [i for i in model.pipeline_layers if i is not None]
        assert ran == list(expected), (layers, ranks, rank)


def two_macs(mini_gb: int = 192, **mini: object) -> dict[str, HostReport]:
    return {"studio": host("studio", 192), "mini": host("mini", mini_gb, **mini)}  # type: ignore[arg-type]


def test_placement_shares_memory_and_copies_to_the_host_that_lacks_it() -> None:
    m = manifest()
    p = plan(m, observed(m, two_macs()))
    assert render_text(p) == dedent(
        """\
          + model.big  (new model)
              resolve        mlx-community/Big-4bit → aaaaaaa in local-ai.lock  [not in local-ai.lock]
              verify         1 files  [check sha256 against local-ai.lock]
              install        serve the HF cache snapshot as is
              copy-to-host   to mini (me@mini.local), copy 200.0 GB  [mini lacks store entry ac39315fb70a5639]
          + model.coder  (new model)
              resolve        mlx-community/Coder-4bit → aaaaaaa in local-ai.lock  [not in local-ai.lock]
              verify         1 files  [check sha256 against local-ai.lock]
              install        serve the HF cache snapshot as is
          = server  (server stopped (server.autostart = false))

        cluster (ring backend, rank 0 = studio)
          studio  (Apple M3 Ultra (studio), 192.0 GB, mlx 0.31.2, mlx-lm 0.31.3, local-ai 0.1.0)
              big  rank 0 of 2, layers 30-59: weights 100.0 GB + KV cache 960.0 MB
              single-Mac models loaded beside them: 5.9 GB
              peak 106.8 GB of 136.8 GB usable · copy 0 B
          mini  (Apple M3 Ultra (mini), 192.0 GB, mlx 0.31.2, mlx-lm 0.31.3, local-ai 0.1.0)
              big  rank 1 of 2, layers 0-29: weights 100.0 GB + KV cache 960.0 MB
              peak 100.9 GB of 136.8 GB usable · copy 200.0 GB

        Download 0 B · disk +0 B · peak memory 106.8 GB of 136.8 GB usable · copy 200.0 GB to hosts
        Plan: 2 to add, 0 to change, 0 to replace, 0 to remove.
        """
    )
    copy = p.action("copy-to-host:big@mini")
    assert copy.depends_on == ("install:big",)
    assert copy.params == CopyParams("mini", "ac39315fb70a5639", 200 * GIB)


def test_host_that_has_the_entry_gets_no_copy() -> None:
    m = manifest()
    o = observed(m, two_macs())
    digest = served_digest(o.resolved["big"].source, m.models["big"], "0")
    p = plan(m, replace(o, hosts=two_macs(digests=(digest,))))
    assert not [a for a in p.actions if a.kind.value == "copy-to-host"]
    assert "      peak 100.9 GB of 136.8 GB usable · copy 0 B" in render_text(p).splitlines()


def test_unreachable_host_blocks_only_its_models() -> None:
    m = manifest()
    down = HostReport(
        "mini",
        reachable=False,
        error="ssh failed: ssh: connect to host mini.local port 22: Connection refused",
    )
    p = plan(m, observed(m, {"studio": host("studio", 192), "mini": down}))
    assert not p.errors
    assert render_text(p) == dedent(
        """\
          ! model.big  (not planned: mini is unreachable (ssh failed: ssh: connect to host mini.local port 22: Connection refused))
          + model.coder  (new model)
              resolve        mlx-community/Coder-4bit → aaaaaaa in local-ai.lock  [not in local-ai.lock]
              verify         1 files  [check sha256 against local-ai.lock]
              install        serve the HF cache snapshot as is
          = server  (server stopped (server.autostart = false))

        cluster (ring backend, rank 0 = studio)
          studio  (Apple M3 Ultra (studio), 192.0 GB, mlx 0.31.2, mlx-lm 0.31.3, local-ai 0.1.0)
              single-Mac models loaded beside them: 5.9 GB
              peak 5.9 GB of 136.8 GB usable · copy 0 B
          mini  (cannot be used: ssh failed: ssh: connect to host mini.local port 22: Connection refused)

        Download 0 B · disk +0 B · peak memory 5.9 GB of 136.8 GB usable
        Plan: 1 to add, 0 to change, 0 to replace, 0 to remove. 1 not planned (!).
        """
    )


def test_share_that_does_not_fit_names_host_and_numbers() -> None:
    m = manifest()
    p = plan(m, observed(m, two_macs(mini_gb=128)))
    assert p.errors == (
        "cluster.hosts.mini: needs about 100.9 GB (big 100.9 GB) but has 91.2 GB usable; place the model on more hosts, lower its quantize level or context, or raise the GPU wired limit there",
    )
    assert not p.actions
    assert render_text(p).endswith("Plan failed: nothing will be changed.\n")


def test_version_mismatch_is_an_error() -> None:
    m = manifest()
    older = (("local-ai", "0.1.0"), ("mlx", "0.31.1"), ("mlx-lm", "0.31.3"))
    missing = (("local-ai", None), ("mlx", None), ("mlx-lm", None))
    p = plan(m, observed(m, two_macs(versions=older)))
    assert p.errors == (
        "cluster.hosts.mini: mlx 0.31.1 differs from rank 0's (studio) 0.31.2; every rank must run the same mlx",
    )
    p = plan(m, observed(m, two_macs(versions=missing)))
    assert p.errors == (
        "cluster.hosts.mini: mlx is not installed for /opt/local-ai/bin/python (not found); install local-ai there as on this machine (docs/cluster.md)",
    )


@pytest.mark.parametrize(
    ("parallel", "kw", "error"),
    [
        (
            "pipeline",
            {"layers": 61},
            'models.big: mlx-lm\'s pipeline split of 61 layers over 2 ranks leaves layer 30 to no rank (mlx_lm/models/pipeline.py); place it on a number of hosts that divides 61, or use parallel = "tensor"',
        ),
        (
            "tensor",
            {"kv_heads": 3},
            'models.big: tensor parallel splits the 3 KV heads evenly across ranks, and 2 hosts do not divide 3; use a number of hosts that does, or parallel = "pipeline"',
        ),
    ],
)
def test_placements_mlx_lm_cannot_run_are_refused(
    parallel: str, kw: dict[str, int], error: str
) -> None:
    m = manifest(CLUSTER.replace('parallel = "pipeline"', f'parallel = "{parallel}"'))
    p = plan(m, observed(m, two_macs(), **kw))
    assert p.errors == (error,)


def test_tensor_parallel_halves_every_layer() -> None:
    m = manifest(CLUSTER.replace('parallel = "pipeline"', 'parallel = "tensor"'))
    text = render_text(plan(m, observed(m, two_macs())))
    assert (
        "      big  rank 0 of 2, 1/2 of every layer: weights 100.0 GB + KV cache 960.0 MB" in text
    )
    assert (
        "      big  rank 1 of 2, 1/2 of every layer: weights 100.0 GB + KV cache 960.0 MB" in text
    )


def test_without_cluster_nothing_changes() -> None:
    m = manifest(
        CLUSTER.split("[models.big]")[0].split("[cluster]")[0]
        + '[models.coder]\nrepo = "mlx-community/Coder-4bit"\n'
    )
    o = Observed(
        state_serial=0, installed={}, lock={}, resolved={"coder": source("coder", m, gib=4)},
        unresolved={}, cached=frozenset({"coder"}), store_digests=frozenset(),
        server=ServerView(running=False), usable_memory=64 * GIB, machine="m",
    )  # fmt: skip
    p = plan(m, o)
    assert p.hosts == () and p.cluster == ""
    assert "cluster" not in render_text(p)


def test_target_without_sharded_models_leaves_the_cluster_out() -> None:
    m = manifest()
    o = replace(observed(m, two_macs()), hosts={})  # observe() skips hosts for such a target
    p = plan(m, o, Options(targets=("coder",)))
    assert p.cluster == "" and p.hosts == ()
    assert not p.errors


def test_free_disk_does_not_change_the_observed_fingerprint() -> None:
    m = manifest()
    o = observed(m, two_macs())
    moved = {n: replace(h, free_disk=1) for n, h in o.hosts.items()}
    assert replace(o, hosts=moved).fingerprint() == o.fingerprint()
    other = {**o.hosts, "mini": replace(o.hosts["mini"], digests=("x",))}
    assert replace(o, hosts=other).fingerprint() != o.fingerprint()


@pytest.mark.parametrize(
    ("model_type", "parallel", "error"),
    [
        (
            "qwen3",
            "pipeline",
            "models.big: mlx-lm 0.31 has no pipeline parallelism for model_type 'qwen3'; use parallel = \"tensor\"",
        ),
        (
            "phi3",
            "tensor",
            "models.big: mlx-lm 0.31 has no tensor parallelism for model_type 'phi3' (it cannot shard this architecture at all)",
        ),
        ("kimi_k2", "pipeline", None),
        ("qwen3", "tensor", None),
    ],
)
def test_architectures_mlx_lm_cannot_split_are_refused(
    model_type: str, parallel: str, error: str | None
) -> None:
    m = manifest(CLUSTER.replace('parallel = "pipeline"', f'parallel = "{parallel}"'))
    o = observed(m, two_macs())
    o = replace(
        o, resolved={**o.resolved, "big": replace(o.resolved["big"], model_type=model_type)}
    )
    assert plan(m, o).errors == ((error,) if error else ())


def test_sharding_tables_match_the_installed_mlx_lm() -> None:
    """TENSOR_MODULES / PIPELINE_MODULES / MODULE_OF_TYPE against mlx-lm itself."""
    import importlib
    import inspect
    import pkgutil

    import mlx_lm.models
    from mlx_lm.models.pipeline import PipelineMixin
    from mlx_lm.utils import MODEL_REMAPPING

    from local_ai.reconcile.cluster import MODULE_OF_TYPE, PIPELINE_MODULES, TENSOR_MODULES

    tensor, pipeline = set(), set()
    for info in pkgutil.iter_modules(mlx_lm.models.__path__):
        try:
            module = importlib.import_module(f"mlx_lm.models.{info.name}")
        except BaseException:  # modules needing extra packages (olmo exits)
            continue
        if hasattr(getattr(module, "Model", None), "shard"):
            tensor.add(info.name)
        classes = [c for c in vars(module).values() if inspect.isclass(c)]
        if any(issubclass(c, PipelineMixin) and c is not PipelineMixin for c in classes):
            pipeline.add(info.name)
    assert tensor == TENSOR_MODULES
    assert pipeline == PIPELINE_MODULES
    assert MODULE_OF_TYPE.items() <= MODEL_REMAPPING.items()


def test_model_up_to_date_here_but_missing_on_a_host_is_a_change() -> None:
    from local_ai.reconcile.model import InstalledView, install_fields, install_key

    m = manifest()
    o = observed(m, two_macs())
    spec = m.models["big"]
    here = InstalledView(
        alias="big",
        spec_key=install_key(spec),
        spec=install_fields(spec),
        commit=C1,
        location="/store/big",
        location_kind="hf-cache",
        size_bytes=200 * GIB,
        present=True,
    )
    o = replace(o, installed={"big": here}, lock={"big": o.resolved["big"]}, resolved={})
    p = plan(m, o, Options(targets=("big",)))
    lines = render_text(p).splitlines()
    assert lines[:2] == [
        "  ~ model.big  (mini lacks its files)",
        "      copy-to-host   to mini (me@mini.local), copy 200.0 GB  [mini lacks store entry ac39315fb70a5639]",
    ]
    assert p.action("copy-to-host:big@mini").depends_on == ()


def test_holds_rank_0_no_longer_needs_are_released_and_others_kept() -> None:
    m = manifest()
    digest = served_digest(source("big", m, gib=200).source, m.models["big"], "0")
    held = (
        (f"{digest}-big", "studio", "big"),  # serves today: kept
        ("0123456789abcdef-big", "studio", "big"),  # an older build of big
        ("fedcba9876543210-gone", "studio", "gone"),  # a model removed from the manifest
        ("fedcba9876543210-gone", "other", "gone"),  # another cluster's rank 0: not ours
        ("1111111111111111-coder", "studio", "coder"),  # coder now runs on studio alone
    )
    mini = replace(host("mini", 192, digests=(digest,)), holds=held)
    p = plan(m, observed(m, {"studio": host("studio", 192), "mini": mini}))
    assert not p.errors
    releases = [(a.id, a.cause, a.params) for a in p.actions if a.kind.value == "release-hold"]
    assert releases == [
        (
            "release-hold:big@mini:0123456789abcdef",
            f"big on mini is now store entry {digest}",
            ReleaseParams("mini", "0123456789abcdef-big", "studio", "big"),
        ),
        (
            "release-hold:gone@mini:fedcba9876543210",
            "gone is no longer in the manifest",
            ReleaseParams("mini", "fedcba9876543210-gone", "studio", "gone"),
        ),
        (
            "release-hold:coder@mini:1111111111111111",
            "coder is no longer placed on mini",
            ReleaseParams("mini", "1111111111111111-coder", "studio", "coder"),
        ),
    ]
    text = render_text(p)
    assert (
        "  - hold.gone@mini  (gone is no longer in the manifest)\n      release-hold   on mini: store entry fedcba9876543210-gone\n"
        in text
    )


def test_an_unreachable_host_keeps_its_holds_and_the_plan_says_so() -> None:
    m = manifest(CLUSTER.replace('hosts = ["studio", "mini"]\nparallel = "pipeline"\n', ""))
    down = HostReport("mini", reachable=False, error="ssh failed: Connection refused")
    p = plan(m, observed(m, {"studio": host("studio", 192), "mini": down}))
    assert not [a for a in p.actions if a.kind.value == "release-hold"]
    said = "cluster.hosts.mini is unreachable (ssh failed: Connection refused): the store entries it keeps for rank 0 studio stay held there until an apply reaches it (or `local-ai gc --release-holds` is run there)"
    assert said in p.warnings
    assert f"warning: {said}" in render_text(p).splitlines()


def test_a_model_moved_to_an_unreachable_host_keeps_its_holds_where_it_is_served() -> None:
    """big moves from mini to air, and air is down: big is not planned, so the gateway keeps
    serving it from studio + mini, and mini keeps what it holds for it."""
    m = manifest(
        CLUSTER.replace(
            "[models.big]",
            '[cluster.hosts.air]\nssh = "me@air.local"\naddress = "10.0.0.3"\n\n[models.big]',
        ).replace('hosts = ["studio", "mini"]', 'hosts = ["studio", "air"]')
    )
    air = HostReport("air", reachable=False, error="ssh failed: Connection refused")
    mini = replace(host("mini", 192), holds=(("0123456789abcdef-big", "studio", "big"),))
    p = plan(m, observed(m, {"studio": host("studio", 192), "mini": mini, "air": air}))
    assert not [a for a in p.actions if a.kind.value == "release-hold"], render_text(p)


# --- a host removed from [cluster.hosts] ---------------------------------------------------------

WITHOUT_MINI = CLUSTER.replace(  # mini's table and placement removed; a cluster has 2 hosts
    '[cluster.hosts.mini]\nssh = "me@mini.local"\naddress = "10.0.0.2"\n',
    '[cluster.hosts.air]\nssh = "me@air.local"\naddress = "10.0.0.3"\n',
).replace('hosts = ["studio", "mini"]\nparallel = "pipeline"\n', "")
MINI = ClusterHost(ssh="me@mini.local", python="~/venv/bin/python", home="/Users/me/ai")


def test_a_removed_host_is_reached_as_the_served_group_recorded_it() -> None:
    m = manifest(
        CLUSTER.replace(
            'ssh = "me@mini.local"', 'ssh = "me@mini.local"\npython = "~/venv/bin/python"'
        )
    )
    assert m.cluster is not None
    model = InstalledModel(
        alias="big",
        source="x",
        format="mlx",
        location="/studio/store/abc-big",
        location_kind="store",
    )
    mini = replace(host("mini", 192, digests=("abc",)), store="/Users/me/ai/store")
    group = group_of("big", m.models["big"], m.cluster, model, "abc", {"mini": mini})
    assert group is not None
    served = {"big": AliasEntry(path=model.location, group=group), "coder": AliasEntry(path="/c")}
    assert removed_hosts(m.cluster, served) == {}  # still in [cluster.hosts]
    without = manifest(WITHOUT_MINI).cluster
    assert without is not None and "mini" not in without.hosts
    removed = removed_hosts(without, served)
    assert removed == {"mini": MINI}
    # Renamed (the same ssh destination, its default home): its holds are the new name's.
    renamed = WITHOUT_MINI.replace('"me@air.local"', '"me@mini.local"')
    assert removed_hosts(manifest(renamed).cluster, served) == {}  # type: ignore[arg-type]
    elsewhere = renamed.replace('address = "10.0.0.3"', 'address = "10.0.0.3"\nhome = "/other"')
    assert removed_hosts(manifest(elsewhere).cluster, served) == {"mini": MINI}  # type: ignore[arg-type]
    # Observed with the same report, over the recorded ssh, under its home and Python.
    commands = host_commands(without, removed)
    assert [c.name for c in commands] == ["studio", "air", "mini"]
    assert commands[2].argv == tuple(ssh_argv("me@mini.local"))
    assert commands[2].script == report_script("~/venv/bin/python", "/Users/me/ai")


def test_a_kept_group_on_a_removed_host_keeps_the_hostfile_it_started_with(
    isolated_home: Path,
) -> None:
    """mini left [cluster.hosts] while big could not be planned elsewhere: the group served from
    studio + mini is kept, and writing the hostfiles must neither fail nor rewrite its file."""
    from local_ai.cluster.launch import hostfile_path

    path = hostfile_path("big")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("as started")
    group = GroupEntry(parallel="pipeline", backend="ring", hosts=["studio", "mini"],
                       model_paths=["/studio/store/abc-big", "/Users/me/ai/store/abc-big"],
                       pythons=["p", "p"], addresses=["10.0.0.1", "10.0.0.2"],
                       ssh=[None, ssh_to("me@mini.local")], hostfile=str(path))  # fmt: skip
    kept = AliasMap(
        default="big", models={"big": AliasEntry(path="/studio/store/abc-big", group=group)}
    )
    write_hostfiles(manifest(WITHOUT_MINI), kept)
    assert path.read_text() == "as started"


def _removed(mini: HostReport) -> tuple[Manifest, Observed]:
    m = manifest(WITHOUT_MINI)
    seen = replace(
        observed(
            m, {"studio": host("studio", 192), "air": host("air", 64), "mini": mini}, big_gib=4
        ),
        removed_hosts={"mini": MINI},
    )
    return m, seen


def test_the_holds_on_a_removed_host_are_released_after_the_server_stops_serving_from_it() -> None:
    held = (
        ("0123456789abcdef-big", "studio", "big"),
        ("fedcba9876543210-big", "other", "big"),  # another cluster's rank 0: not ours
    )
    m, seen = _removed(replace(host("mini", 192), holds=held))
    seen = replace(
        seen,
        server=ServerView(running=True, gateway=gateway_settings(m), engine=engine_settings(m)),
    )
    p = plan(m, seen)
    assert not p.errors and not p.warnings
    releases = [
        (a.id, a.cause, a.depends_on, a.params) for a in p.actions if a.kind.value == "release-hold"
    ]
    assert releases == [
        (
            "release-hold:big@mini:0123456789abcdef",
            "mini is no longer in [cluster.hosts]",
            ("reload-aliases",),
            ReleaseParams("mini", "0123456789abcdef-big", "studio", "big"),
        )
    ]
    assert (
        "  - hold.big@mini  (mini is no longer in [cluster.hosts])\n      release-hold   on mini: store entry 0123456789abcdef-big\n"
        in render_text(p)
    )


def test_an_unreachable_removed_host_is_named_with_the_command_to_run_there() -> None:
    m, seen = _removed(HostReport("mini", reachable=False, error="ssh failed: Connection refused"))
    p = plan(m, seen)
    assert not [a for a in p.actions if a.kind.value == "release-hold"]
    said = "cluster.hosts.mini was removed, and rank 0 cannot read its holds there (ssh failed: Connection refused): the store entries it keeps for rank 0 studio stay held, and rank 0 forgets the host once it serves without it; run `local-ai gc --release-holds` on mini (ssh me@mini.local)"
    assert p.warnings == (said,)
    assert f"warning: {said}" in render_text(p).splitlines()
    # Once the generation in service no longer runs a rank there, rank 0 no longer knows it.
    kept = {n: r for n, r in seen.hosts.items() if n != "mini"}
    gone = plan(m, replace(seen, hosts=kept, removed_hosts={}))
    assert not gone.warnings and not [a for a in gone.actions if a.kind.value == "release-hold"]


def test_a_removed_cluster_names_each_host_the_served_groups_ran_on() -> None:
    models = CLUSTER[CLUSTER.index("[models.big]") :]
    m = manifest(models.replace('hosts = ["studio", "mini"]\nparallel = "pipeline"\n', ""))
    assert m.cluster is None
    group = GroupEntry(
        parallel="pipeline",
        backend="ring",
        hosts=["studio", "mini"],
        model_paths=["/studio/store/abc-big", "/Users/me/ai/store/abc-big"],
        pythons=["/x/python", shell_path("~/venv/bin/python")],
        addresses=["10.0.0.1", "10.0.0.2"],
        ssh=[None, ssh_to("me@mini.local")],
        hostfile="/h.json",
    )
    removed = removed_hosts(None, {"big": AliasEntry(path="/studio/store/abc-big", group=group)})
    assert removed == {"mini": MINI}
    seen = replace(observed(m, {"studio": host("studio", 192)}, big_gib=4), removed_hosts=removed)
    p = plan(m, seen)
    said = "[cluster] was removed, but the generation in service runs ranks on mini: the store entries this Mac keeps held there stay held, and it forgets the host once it serves without it; run `local-ai gc --release-holds` on mini (ssh me@mini.local)"
    assert p.warnings == (said,)
    assert not plan(m, replace(seen, removed_hosts={})).warnings
