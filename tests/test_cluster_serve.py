"""Serving a sharded alias: the group launch command, the alias map apply builds for it, and
the gateway's group supervisor (docs/cluster.md). Host "b" is this machine with its own
local-ai home, reached through a real sshd on 127.0.0.1 (tests/harness/sshd.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_ai.cluster.launch import free_ports, group_command, launcher
from local_ai.cluster.observe import HostReport
from local_ai.manifest.load import load_manifest
from local_ai.reconcile.serving import alias_map_of, group_of
from local_ai.server.groupspec import parse_rank_line
from local_ai.store.state import InstalledModel, State
from tests.harness import tinymodels as tm
from tests.harness.sshd import (
    HOST_B,
    install_ssh,
    path_with,
    set_reachable,
    sharded_tiny,
    two_hosts,
)
from tests.server_helpers import (
    TOOL_FUNCTION,
    TOOL_NAME,
    Daemon,
    build_tool_model,
    free_port,
    wait_for,
)


def test_the_group_command_starts_rank_0_with_its_config_and_the_others_following(
    tmp_path: Path,
) -> None:
    group = {"alias": "tiny", "parallel": "pipeline", "hosts": ["a", "b"],
             "model_paths": ["/s/x y", "/t/it's"], "max_batch_size": 4, "debug": False}  # fmt: skip
    # Each rank's "python" prints the arguments it would get, one per line.
    show = "printf '%s\\n'"
    argv = group_command(tmp_path / "h.json", 40000, [show, show], tmp_path / "e e.json", group)
    start = len(launcher())
    assert argv[:start] == launcher()
    argv = argv[start - 1 :]  # as if the launcher were one word
    assert argv[1:6] == ["--hostfile", str(tmp_path / "h.json"), "--starting-port", "40000", "--"]
    assert argv[6:8] == ["sh", "-c"]
    script = argv[8]

    def rank(n: int) -> list[str]:
        env = {**os.environ, "MLX_RANK": str(n)}
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert rank(0) == ["-m", "local_ai.server.engine", "--config", str(tmp_path / "e e.json")]
    follower = rank(1)
    assert follower[:3] == ["-m", "local_ai.server.engine", "--follow"]
    assert json.loads(follower[3]) == group  # quoting survives spaces and quotes
    stray = subprocess.run(["sh", "-c", script], env={**os.environ, "MLX_RANK": "2"},
                           capture_output=True, text=True)  # fmt: skip
    assert stray.returncode == 64 and "no rank 2" in stray.stderr


def test_ports_are_free_ones_on_loopback_and_mlx_default_between_hosts() -> None:
    port = free_ports(["127.0.0.1", "127.0.0.1"])
    assert 1024 < port < 65535 and port != 32323
    assert free_ports(["127.0.0.1", "192.168.2.2"]) == 32323


def test_what_the_gateway_starts_a_group_with_is_what_every_rank_parses() -> None:
    from local_ai.server.aliases import GroupEntry
    from local_ai.server.gateway.group import group_doc
    from local_ai.server.gateway.supervisor import EngineSpec
    from local_ai.server.groupspec import GroupSpec, rank_line

    entry = GroupEntry(parallel="tensor", backend="ring", hosts=["a", "b"],
                       model_paths=["/x", "/y"], pythons=["p", "p"],
                       addresses=["127.0.0.1"] * 2, ssh=[None, ["ssh", "--", "b"]],
                       hostfile="/h")  # fmt: skip
    spec = EngineSpec(socket="/s", aliases_file="/a", max_loaded_models=1, idle_ttl_s=0,
                      prompt_cache=False, max_batch_size=3)  # fmt: skip
    doc = group_doc("tiny", entry, spec)
    parsed = GroupSpec.parse(json.loads(json.dumps(doc)), "--follow")
    assert parsed.to_json() == doc and parsed.max_batch_size == 3 and parsed.hosts == ["a", "b"]
    with pytest.raises(ValueError, match="group tiny: parallel must be one of pipeline, tensor"):
        group_doc("tiny", entry.model_copy(update={"parallel": "expert"}), spec)
    with pytest.raises(ValueError, match=r"--follow: .*hosts and model_paths"):
        GroupSpec.parse({**doc, "hosts": ["a"]}, "--follow")
    assert parse_rank_line(rank_line(1, "b", 4242)) == {"rank": 1, "host": "b", "pid": 4242}


def test_rank_lines_are_parsed_and_anything_else_ignored() -> None:
    line = 'local-ai-rank {"rank": 1, "host": "b", "pid": 4242}\n'
    assert parse_rank_line(line) == {"rank": 1, "host": "b", "pid": 4242}
    assert parse_rank_line("local-ai-rank {not json}") is None
    assert parse_rank_line('local-ai-rank {"rank": "1", "pid": 2}') is None
    assert parse_rank_line('[INFO] local-ai-rank {"rank": 1, "pid": 2}') is None


def _report(name: str, store: str | None, digests: tuple[str, ...]) -> HostReport:
    return HostReport(name=name, reachable=True, store=store, digests=digests)


def test_a_sharded_alias_is_served_by_a_group_once_every_host_has_its_entry(
    tmp_path: Path, isolated_home: Path
) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(sharded_tiny(tmp_path / "model", tmp_path / "host-b"))
    loaded = load_manifest(manifest).manifest
    spec, cluster = loaded.models["tiny"], loaded.cluster
    assert cluster is not None
    model = InstalledModel(
        alias="tiny",
        source="x",
        format="mlx",
        location=str(isolated_home / "store" / "abc-tiny"),
        location_kind="store",
    )
    lacking = {"b": _report("b", "/far/store", ())}
    assert group_of("tiny", spec, cluster, model, "abc", lacking) is None
    held = {"b": _report("b", "/far/store/", ("abc",))}
    group = group_of("tiny", spec, cluster, model, "abc", held)
    assert group is not None
    assert group.model_paths == [model.location, "/far/store/abc-tiny"]
    assert group.hosts == ["a", "b"] and group.parallel == "pipeline"
    assert group.pythons == [shlex.quote(sys.executable)] * 2
    assert group.ssh[0] is None and group.ssh[1] is not None
    assert group.ssh[1][0] == "ssh" and group.ssh[1][-1] == HOST_B
    assert group.hostfile == str(isolated_home / "run" / "cluster" / "tiny.hostfile.json")
    # Copied by this apply: served although the snapshot did not see it there.
    copied = group_of("tiny", spec, cluster, model, "abc", lacking, copied={"b"})
    assert copied == group

    # A group kept while b is down is what the manifest asks only if placed as it declares.
    state = State(models={"tiny": model})
    served = alias_map_of(loaded, state, {"tiny": None}, groups={"tiny": group})
    assert served.models["tiny"].group == group and served.hash is not None
    edited = group.model_copy(update={"parallel": "tensor"})
    stale = alias_map_of(loaded, state, {"tiny": None}, groups={"tiny": edited})
    assert stale.models["tiny"].group == edited and stale.hash is None


# --- end to end: apply serves a 2-rank group behind the gateway ----------------------------------

PROMPT = [{"role": "user", "content": "Say something"}]


@dataclass
class Cluster:
    daemon: Daemon
    first_apply: subprocess.CompletedProcess[str]
    ssh_dir: Path  # the `ssh` wrapper local-ai, mlx.launch and the gateway run (set_reachable)

    def status(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.daemon.url}/api/status",
            headers={"authorization": f"Bearer {self.daemon.token()}"},
            timeout=10,
        )
        return dict(response.json())

    def group(self, alias: str) -> dict[str, Any]:
        model = next(m for m in self.status()["models"] if m["alias"] == alias)
        return dict(model["group"])


def _dense_deepseek(out: Path) -> Path:
    """A tiny deepseek_v2 (an architecture mlx-lm splits as a pipeline) with dense MLPs only:
    MLX's CPU gather_mm (MoE experts) runs float32 only, and the store keeps float16."""
    tm.build_model(out, "deepseek_v2", num_layers=4)
    config = json.loads((out / "config.json").read_text())
    config["first_k_dense_replace"] = config["num_hidden_layers"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tm.save_safetensors(out / "model.safetensors", tm.make_weights(config))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One gateway serving `tiny` (deepseek_v2, pipeline over hosts a and b) and `tools` (the
    scripted tool-call qwen3, tensor over a and b), and the same two models on this Mac alone
    as `solo` and `solo_tools`; host b has its own local-ai home behind the fake ssh."""
    root = tmp_path_factory.mktemp("cluster")
    port = free_port()
    model = _dense_deepseek(root / "tiny")
    tools = build_tool_model(root / "tools")
    bin_dir = root / "bin"
    install_ssh(bin_dir)
    manifest = root / "local-ai.toml"
    manifest.write_text(
        two_hosts(root / "host-b")
        + f"""
[server]
port = {port}
[benchmark]
on_apply = false
[models.solo]
path = "{model}"
[models.tiny]
path = "{model}"
hosts = ["a", "b"]
parallel = "pipeline"
[models.tools]
path = "{tools}"
hosts = ["a", "b"]
parallel = "tensor"
[models.solo_tools]
path = "{tools}"
"""
    )
    daemon = Daemon(root / "home", manifest, port, extra_env={"PATH": path_with(bin_dir)})
    try:
        applied = daemon.cli("apply", "--yes", timeout=600)
        yield Cluster(daemon, applied, bin_dir)
    finally:
        daemon.cli("server", "stop", "--timeout", "10")
        daemon.kill()


def _ready(cluster: Cluster, alias: str, timeout: float = 300) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal seen
        with contextlib.suppress(httpx.HTTPError):
            seen = cluster.group(alias)
        return seen.get("state") == "ready"

    assert wait_for(ready, timeout, interval=0.5), (seen, cluster.daemon.log())
    return seen


def _started(cluster: Cluster) -> None:
    done = cluster.first_apply
    assert done.returncode == 0, done.stdout + done.stderr
    assert "copy-to-host:tiny@b" in done.stderr and "copy-to-host:tools@b" in done.stderr
    for alias, parallel in (("tiny", "pipeline"), ("tools", "tensor")):
        group = _ready(cluster, alias)
        assert group["parallel"] == parallel and group["hosts"] == ["a", "b"]
        ranks = group["ranks"]
        assert [(r["rank"], r["host"], r["state"]) for r in ranks] == [
            (0, "a", "ready"), (1, "b", "ready")
        ]  # fmt: skip
        assert all(isinstance(r["pid"], int) for r in ranks)
    out = cluster.daemon.cli("server", "status").stdout
    assert "group tiny (pipeline over a, b, ring) ready" in out
    assert "rank 1 on b pid" in out


def _same_answers(cluster: Cluster) -> None:
    import anthropic
    import openai

    _ready(cluster, "tiny")
    _ready(cluster, "tools")
    sdk = openai.OpenAI(base_url=f"{cluster.daemon.url}/v1", api_key="x", max_retries=0)

    def chat(model: str, stream: bool) -> str:
        ask: Any = {"model": model, "messages": PROMPT, "max_tokens": 12, "temperature": 0}
        if stream:
            chunks = sdk.chat.completions.create(**ask, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return sdk.chat.completions.create(**ask).choices[0].message.content or ""

    want = chat("solo", stream=False)
    assert want
    assert chat("tiny", stream=False) == want
    assert chat("tiny", stream=True) == want
    claude = anthropic.Anthropic(base_url=f"{cluster.daemon.url}/anthropic", api_key="x")

    def message(model: str) -> str:
        got = claude.messages.create(
            model=model, max_tokens=12, messages=PROMPT, extra_body={"temperature": 0}
        )
        return "".join(b.text for b in got.content if b.type == "text")

    assert message("tiny") == message("solo")

    tools: Any = [{"type": "function", "function": TOOL_FUNCTION}]
    for model in ("solo_tools", "tools"):
        answer = sdk.chat.completions.create(
            model=model, messages=PROMPT, tools=tools, max_tokens=40, temperature=0
        )
        calls = answer.choices[0].message.tool_calls or []
        assert answer.choices[0].finish_reason == "tool_calls", answer
        got = [(c.function.name, json.loads(c.function.arguments)) for c in calls]  # type: ignore[union-attr]
        assert got == [(TOOL_NAME, {"city": "Paris"})]
    used = claude.messages.create(
        model="tools",
        max_tokens=40,
        messages=PROMPT,
        tools=[
            {
                "name": TOOL_NAME,
                "description": "Weather for a city",
                "input_schema": TOOL_FUNCTION["parameters"],
            }
        ],
    )
    blocks = [b for b in used.content if b.type == "tool_use"]
    assert used.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in blocks] == [(TOOL_NAME, {"city": "Paris"})]


# An idle group's processes, measured in CPU time over a fixed window: a rank or launcher that
# polls takes what it gets (a core; 0.16 each at load 15 on these 2 cores), a sleeping one
# 0.003-0.018 (rank 0's heartbeat) at load 12.
IDLE_WINDOW_S = 6.0
IDLE_CPU_BOUND = 0.05  # core-seconds per second of the window


def _watchers(cluster: Cluster) -> list[tuple[int, Any]]:
    """The gateway's ssh processes watching a remote rank: (the rank's pid, the process)."""
    import psutil

    found = []
    for child in psutil.Process(int(cluster.daemon.pidfile()["pid"])).children():
        with contextlib.suppress(psutil.Error):
            watched = re.search(r"kill -0 (\d+)", " ".join(child.cmdline()))
            if child.name() == "ssh" and watched:
                found.append((int(watched.group(1)), child))
    return sorted(found, key=lambda w: w[0])


def _idle_costs_little(cluster: Cluster) -> None:
    """An idle group's processes sleep, and its remote ranks are watched by one ssh each, not a
    new ssh every few seconds (each a login on the far host)."""
    import time

    import psutil

    procs: dict[str, list[psutil.Process]] = {}
    remote: list[int] = []
    for alias in ("tiny", "tools"):
        group = _ready(cluster, alias)
        ranks = {r["pid"]: r for r in group["ranks"]}
        for pid, rank in ranks.items():
            procs[f"{alias} rank {rank['rank']}"] = [psutil.Process(pid)]
        remote += [pid for pid, rank in ranks.items() if rank["rank"] > 0]
        launcher = psutil.Process(group["pid"])  # with mlx.launch, its shells and ssh
        tree = [launcher, *launcher.children(recursive=True)]
        procs[f"{alias} launcher"] = [p for p in tree if p.pid not in ranks]
    # A rank's pid may come after the group is ready; its watcher starts with the next check.
    wait_for(lambda: [pid for pid, _ in _watchers(cluster)] == sorted(remote), 60, interval=0.2)
    watchers = _watchers(cluster)
    procs["watchers"] = [ssh for _, ssh in watchers]
    ssh_log = cluster.ssh_dir / "ssh.log"  # a line per ssh started, by anyone
    calls = len(ssh_log.read_text().splitlines())

    def cpu() -> dict[str, float]:
        return {name: sum(sum(p.cpu_times()[:2]) for p in ps) for name, ps in procs.items()}

    before, started = cpu(), time.monotonic()
    time.sleep(IDLE_WINDOW_S)  # the window measured; nothing is awaited
    after, took = cpu(), time.monotonic() - started
    started_meanwhile = ssh_log.read_text().splitlines()[calls:]
    assert started_meanwhile == [], f"{len(started_meanwhile)} ssh started: {started_meanwhile}"
    assert [w for w, _ in watchers] == sorted(remote), (watchers, remote)
    assert _watchers(cluster) == watchers  # the same processes, still running
    used = {name: round((after[name] - before[name]) / took, 3) for name in procs}
    assert all(share < IDLE_CPU_BOUND for share in used.values()), used


def _killed_rank_recovers(cluster: Cluster) -> None:
    import openai

    before = _ready(cluster, "tiny")
    sdk = openai.OpenAI(base_url=f"{cluster.daemon.url}/v1", api_key="x", max_retries=0)
    ask: Any = {"model": "solo", "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    want = sdk.chat.completions.create(**ask).choices[0].message.content
    os.kill(before["ranks"][1]["pid"], signal.SIGKILL)
    seen: dict[str, Any] = {}

    def named() -> bool:
        nonlocal seen
        seen = cluster.group("tiny")
        return "rank 1 on host b" in str(seen.get("reason"))

    assert wait_for(named, 60, interval=0.2), seen
    assert seen["state"] in ("restarting", "starting", "error")
    # Single-Mac aliases keep serving meanwhile.
    assert sdk.chat.completions.create(**ask).choices[0].message.content == want
    after = _ready(cluster, "tiny")
    assert after["restarts"] == before["restarts"] + 1
    assert after["ranks"][1]["pid"] != before["ranks"][1]["pid"]
    # The dead rank's watcher ended with it; the new rank 1 has its own, the tools group keeps its.
    tools = cluster.group("tools")["ranks"][1]["pid"]
    watched = sorted([after["ranks"][1]["pid"], tools])
    assert wait_for(lambda: [w for w, _ in _watchers(cluster)] == watched, 60, interval=0.2), (
        _watchers(cluster), watched
    )  # fmt: skip
    again = sdk.chat.completions.create(**{**ask, "model": "tiny"})
    assert again.choices[0].message.content == want


def _hold_on_b(cluster: Cluster, alias: str) -> dict[str, Any]:
    """Host b's hold of the store entry it serves `alias` from (docs/cluster.md)."""
    holds = cluster.daemon.manifest.parent / "host-b" / "cluster" / "holds"
    found = [json.loads(p.read_text()) for p in holds.glob(f"*/a--{alias}.json")]
    assert len(found) == 1, found
    return dict(found[0])


def _second_apply_changes_nothing(cluster: Cluster) -> None:
    before = _ready(cluster, "tools")
    done = cluster.daemon.cli("apply", "--yes", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no changes" in done.stdout.lower(), done.stdout
    after = cluster.group("tools")
    assert (after["pid"], after["restarts"], after["state"]) == (
        before["pid"], before["restarts"], "ready"
    )  # fmt: skip


def _down_with_host_b(cluster: Cluster, alias: str, when: str) -> None:
    """`alias` is still served (listed, its group in /api/status) in an error naming host b,
    and a request for it gets a 503 saying so."""
    import openai

    sdk = openai.OpenAI(base_url=f"{cluster.daemon.url}/v1", api_key="x", max_retries=0)
    assert alias in [m.id for m in sdk.models.list()], when
    seen: dict[str, Any] = {}

    def named() -> bool:
        nonlocal seen
        with contextlib.suppress(httpx.HTTPError, StopIteration):
            seen = cluster.group(alias)
        return seen.get("state") in ("restarting", "error") and down in str(seen["reason"])

    down = "rank 1 on host b: unreachable, ssh failed (ssh: connect to host"  # b is down from start
    assert wait_for(named, 120, interval=0.5), (when, seen)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model=alias, messages=PROMPT, max_tokens=4, timeout=120)
    assert refused.value.status_code == 503, when
    assert down in str(refused.value), (when, refused.value)


@pytest.mark.timeout(900)  # two 2-rank groups started twice, an engine, on a loaded machine
def test_a_sharded_alias_is_applied_served_recovered_and_stopped(cluster: Cluster) -> None:
    """The steps share one daemon in order: its four ranks cost most of this test's time."""
    _started(cluster)
    _idle_costs_little(cluster)
    # Each rank 1 start records its hold on b (the copy wrote it first).
    started = {alias: _hold_on_b(cluster, alias) for alias in ("tiny", "tools")}
    assert {h["how"] for h in started.values()} == {"rank 1 started"}, started
    _same_answers(cluster)
    _killed_rank_recovers(cluster)
    # The restarted group confirmed tiny's hold again.
    assert _hold_on_b(cluster, "tiny")["confirmed_at"] > started["tiny"]["confirmed_at"]
    _second_apply_changes_nothing(cluster)
    ranks = [r["pid"] for alias in ("tiny", "tools") for r in cluster.group(alias)["ranks"]]
    assert all(isinstance(pid, int) for pid in ranks)
    watchers = [ssh.pid for _, ssh in _watchers(cluster)]
    assert len(watchers) == 2, watchers
    stopped = cluster.daemon.cli("server", "stop", "--timeout", "30")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    def gone() -> bool:
        for pid in ranks + watchers:  # no ssh left behind either
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    assert wait_for(gone, 30, interval=0.2), ranks


@pytest.mark.timeout(900)  # server starts, an apply, and two groups started once b is back
def test_a_host_down_after_apply_leaves_the_served_aliases_as_applied(cluster: Cluster) -> None:
    """Host b goes down after apply: however the server is started again, and an apply that
    changes another model, it serves the map apply recorded, the sharded aliases in an error
    naming b; once b is back they answer again and apply changes only what it must."""
    import openai

    daemon = cluster.daemon
    sdk = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x", max_retries=0)
    ask: Any = {"model": "solo", "messages": PROMPT, "max_tokens": 8, "temperature": 0}
    daemon.cli("server", "stop", "--timeout", "30")  # the test before ends with a stop
    set_reachable(cluster.ssh_dir, False)
    login: subprocess.Popen[bytes] | None = None
    try:
        started = daemon.cli("server", "start", timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        _down_with_host_b(cluster, "tiny", "after server stop + start")
        want = sdk.chat.completions.create(**ask).choices[0].message.content  # solo serves
        assert want

        restarted = daemon.cli("server", "restart", timeout=300)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        _down_with_host_b(cluster, "tiny", "after server restart")

        # An apply that changes another model plans that change only and keeps the groups.
        text = daemon.manifest.read_text()
        solo = "[models.solo]\n"
        daemon.manifest.write_text(text.replace(solo, f"{solo}context = 4096\n"))
        applied = daemon.cli("apply", "--yes", timeout=300)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        for alias in ("tiny", "tools"):
            assert f"! model.{alias}" in applied.stdout, applied.stdout
        assert "not planned: b is unreachable" in applied.stdout, applied.stdout
        assert _contexts(cluster)["solo"] == 4096
        for alias in ("tiny", "tools"):
            _down_with_host_b(cluster, alias, "after an apply while b is down")

        back = daemon.cli("rollback", timeout=120)
        assert back.returncode == 0, back.stdout + back.stderr
        assert _contexts(cluster)["solo"] != 4096
        _down_with_host_b(cluster, "tiny", "after rollback")

        stopped = daemon.cli("server", "stop", "--timeout", "30")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        login = _start_as_launchd_does(daemon)
        _down_with_host_b(cluster, "tiny", "started as launchd starts it")
    finally:
        set_reachable(cluster.ssh_dir, True)
    _ready(cluster, "tiny")
    assert (
        sdk.chat.completions.create(**{**ask, "model": "tiny"}).choices[0].message.content == want
    )
    # Back to the manifest (the rollback undid the context change): a reload, groups untouched.
    group = _ready(cluster, "tools")
    again = daemon.cli("apply", "--yes", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reload-aliases" in again.stdout and "copy-to-host" not in again.stdout, again.stdout
    assert cluster.group("tools")["pid"] == group["pid"]
    assert _contexts(cluster)["solo"] == 4096
    stopped = daemon.cli("server", "stop", "--timeout", "30")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert login is not None and login.wait(timeout=60) == 0


def _contexts(cluster: Cluster) -> dict[str, int]:
    return {m["alias"]: m["context"] for m in cluster.status()["models"]}


def _start_as_launchd_does(daemon: Daemon) -> subprocess.Popen[bytes]:
    """`server start --foreground`, the LaunchAgent's command, once /health says ready."""
    log_path = daemon.home / "login.log"
    with log_path.open("ab") as log:
        login = subprocess.Popen(
            [sys.executable, "-m", "local_ai", "server", "start", "--foreground"],
            env={**os.environ, **daemon.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def healthy() -> bool:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return bool(httpx.get(f"{daemon.url}/health").json()["status"] == "ready")
        return login.poll() is not None

    assert wait_for(healthy, 180, interval=0.5) and login.poll() is None, log_path.read_text()
    return login


def _supervisor(ssh: list[list[str] | None], parallel: str = "tensor") -> Any:
    """A GroupSupervisor of ranks on hosts a, b, … reached with `ssh` (None: rank 0, here)."""
    from local_ai.server.aliases import GroupEntry
    from local_ai.server.gateway.group import GroupSupervisor
    from local_ai.server.gateway.supervisor import EngineSpec

    hosts = ["a", "b", "c"][: len(ssh)]
    group = GroupEntry(parallel=parallel, backend="ring", hosts=hosts,
                       model_paths=["/x"] * len(ssh), pythons=["p"] * len(ssh),
                       addresses=["127.0.0.1"] * len(ssh), ssh=ssh, hostfile="/h")  # fmt: skip
    spec = EngineSpec(socket="/s", aliases_file="/a", max_loaded_models=1, idle_ttl_s=0,
                      prompt_cache=False)  # fmt: skip
    return GroupSupervisor("t", group, spec)


def test_the_group_learns_rank_pids_and_names_the_first_rank_mlx_launch_saw_end(
    isolated_home: Path,
) -> None:
    supervisor = _supervisor([None, ["ssh", "--", "b"]])
    supervisor._note('local-ai-rank {"rank": 1, "host": "b", "pid": 77}\n')
    assert supervisor.ranks[1]["pid"] == 77 and supervisor.ranks[1]["state"] == "loaded"
    supervisor._note("\x1b[33m[WARN] Node with rank 1 exited with code 137 \x1b[0m\n")
    supervisor._note("\x1b[33m[WARN] Node with rank 0 exited with code -15 \x1b[0m\n")
    assert supervisor.lost == "rank 1 on host b: exited with code 137"
    assert supervisor.ranks[1]["state"] == "dead"
    assert supervisor.ranks[1]["last_error"] == "exited with code 137"


def test_the_group_is_ready_once_every_rank_reported_its_pid(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0's /health can answer before rank 1's line has come through ssh and mlx.launch: the
    group waits for it, so a ready group always names every rank's pid (CI saw `None`)."""
    import asyncio

    from local_ai.server.gateway.supervisor import EngineSupervisor

    async def healthy(self: EngineSupervisor, proc: asyncio.subprocess.Process) -> bool:
        return True  # rank 0 answers /health at once

    monkeypatch.setattr(EngineSupervisor, "_wait_ready", healthy)

    async def scenario() -> None:
        supervisor = _supervisor([None, ["ssh", "--", "b"]], "pipeline")
        # In its own session, as the real launcher: stopping a group signals that session.
        launcher = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
        supervisor._note('local-ai-rank {"rank": 0, "host": "a", "pid": 10}\n')
        loop = asyncio.get_running_loop()
        loop.call_later(
            0.5, supervisor._note, 'local-ai-rank {"rank": 1, "host": "b", "pid": 11}\n'
        )
        try:
            assert await supervisor._wait_ready(launcher)
            assert [r["pid"] for r in supervisor.ranks] == [10, 11]
            # A rank that mlx.launch saw end before its line came: not ready, the rest stopped.
            lost = _supervisor([None, ["ssh", "--", "b"]], "pipeline")
            lost._proc = launcher
            lost._note('local-ai-rank {"rank": 0, "host": "a", "pid": 10}\n')
            lost._note("[WARN] Node with rank 1 exited with code 137\n")
            assert not await asyncio.wait_for(lost._wait_ready(launcher), 30)
            assert launcher.returncode is not None  # terminated, not left to hang
            # A launcher that ends before every rank reported is not ready.
            again = _supervisor([None, ["ssh", "--", "b"]], "pipeline")
            assert not await again._wait_ready(launcher)
        finally:
            if launcher.returncode is None:
                launcher.kill()
                await launcher.wait()

    asyncio.run(scenario())


def test_a_watch_that_ends_without_a_verdict_is_started_again_at_the_next_check(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A far shell that ends oddly (or a line the reader cannot take) says nothing of the rank:
    the group starts another watcher at its next check (one per WATCH_S, never a tight loop)."""
    import asyncio
    import time

    from local_ai.server.gateway import group as group_module
    from local_ai.server.gateway.group import RankWatcher

    odd = ["sh", "-c", "exit 3"]  # stands for ssh: the command after it becomes $0
    huge = ["sh", "-c", "head -c 70000 /dev/zero | tr '\\0' x; echo; sleep 60"]
    started: list[float] = []
    enough: list[asyncio.Event] = []  # made in the scenario's loop

    class Counted(RankWatcher):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            started.append(time.monotonic())
            if len(started) >= 3:
                enough[0].set()
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(group_module, "RankWatcher", Counted)

    async def scenario() -> None:
        watcher = RankWatcher(huge, os.getpid(), asyncio.Event())
        await watcher.next_answer(30)
        assert watcher.lapsed and watcher.answer == (None, None)
        await watcher.stop()

        supervisor = _supervisor([None, odd])
        supervisor.ranks[0]["pid"], supervisor.ranks[1]["pid"] = os.getpid(), os.getpid()
        launcher = await asyncio.create_subprocess_exec("sleep", "60")
        enough.append(asyncio.Event())
        watch = asyncio.create_task(supervisor._watch(launcher))
        begun = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough[0].wait(), 60)
        took = time.monotonic() - begun
        supervisor._stopping = True
        launcher.kill()
        await launcher.wait()
        await asyncio.wait_for(watch, 10)
        await supervisor._stop_watchers()
        assert len(started) >= 3, started
        assert len(started) <= took / group_module.WATCH_S + 2, (len(started), took)
        assert supervisor.lost is None  # no verdict: the rank is not declared dead

    asyncio.run(scenario())


def test_a_rank_on_another_host_is_watched_by_one_ssh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    """Each remote rank has one ssh to its host running a kill -0 loop: `alive` lines while the
    pid lives, then `gone`, which ends the group; ssh's own failure or its silence make the rank
    unreachable; stopping a watcher leaves no ssh behind."""
    import asyncio

    import psutil

    from local_ai.cluster.observe import ssh_to
    from local_ai.server.gateway import group as group_module
    from local_ai.server.gateway.group import RankWatcher

    bin_dir = tmp_path / "bin"
    log = install_ssh(bin_dir)
    monkeypatch.setenv("PATH", path_with(bin_dir))
    monkeypatch.setattr(group_module, "WATCH_S", 0.2)
    supervisor = _supervisor([None, ssh_to(HOST_B), ssh_to("c.unreachable")])
    rank = subprocess.Popen(["sleep", "60"])

    def our_ssh() -> list[psutil.Process]:
        return [p for p in psutil.Process().children() if p.name() in ("ssh", "sh", "sleep")
                and p.pid != rank.pid]  # fmt: skip

    async def answer(ssh: list[str], pid: int) -> tuple[bool | None, str | None]:
        watcher = RankWatcher(ssh, pid, asyncio.Event())
        for _ in range(3):  # its verdict, or three lines saying alive
            await watcher.next_answer(60)
        await watcher.stop()
        return watcher.answer

    async def scenario() -> None:
        assert await answer(ssh_to(HOST_B), rank.pid) == (True, None)
        alive, why = await answer(ssh_to("c.unreachable"), rank.pid)
        assert alive is False and str(why).startswith(
            "ssh failed (ssh: connect to host 127.0.0.1 port"
        ), why
        with monkeypatch.context() as short:
            short.setattr(group_module, "SSH_CHECK_TIMEOUT_S", 1.0)
            hung = ["sh", "-c", "exec sleep 60"]  # an ssh whose link answers nothing
            assert await answer(hung, rank.pid) == (False, "no answer over ssh within 1 s")
        assert our_ssh() == []

        # A group whose rank 1 dies: named by its watcher, the launcher's session stopped.
        launcher = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
        supervisor._proc = launcher
        for r, pid in ((0, os.getpid()), (1, rank.pid)):
            supervisor.ranks[r]["pid"] = pid
        calls = len(log.read_text().splitlines())
        watch = asyncio.create_task(supervisor._watch(launcher))
        for _ in range(10):  # about 2 s of checks, over the same connection
            await asyncio.sleep(0.2)
        assert supervisor._alive(1, rank.pid) == (True, None) and supervisor.lost is None
        assert len(log.read_text().splitlines()) == calls + 1, log.read_text()
        assert f"kill -0 {rank.pid}" in log.read_text().splitlines()[-1]
        rank.kill()
        rank.wait()  # a zombie would still answer kill -0
        await asyncio.wait_for(watch, 60)
        assert supervisor.lost == f"rank 1 on host b (pid {rank.pid}): its process is gone"
        assert [r["state"] for r in supervisor.ranks] == ["starting", "dead", "starting"]
        assert launcher.returncode is not None
        await supervisor._stop_watchers()
        assert our_ssh() == []

    try:
        asyncio.run(scenario())

        # mlx.launch's ssh exits 255, quietly, for a host that is down: ssh tells which.
        def ended_255(r: int) -> str | None:
            supervisor.ranks, supervisor.lost = supervisor._fresh_ranks(), None
            supervisor._note(f"[WARN] Node with rank {r} exited with code 255\n")
            asyncio.run(supervisor._unreachable(r))
            return supervisor.lost

        assert ended_255(1) == "rank 1 on host b: exited with code 255"  # b answers ssh
        assert str(ended_255(2)).startswith(
            "rank 2 on host c: unreachable, ssh failed (ssh: connect to host 127.0.0.1 port"
        )
        assert supervisor.ranks[2]["state"] == "unreachable"
    finally:
        rank.kill()


def test_the_group_launcher_ends_its_session_when_the_gateway_is_gone(tmp_path: Path) -> None:
    """A gateway killed with -9 cannot stop its group: the launcher sees it gone and ends its
    whole session (here `sleep` stands in for mlx.launch and its ranks)."""
    import psutil

    code = (
        "import subprocess, sys, time\n"
        "proc = subprocess.Popen([sys.executable, '-c', 'import os; from local_ai.cluster.launch "
        'import run_watched; run_watched(["sleep", "120"], os.getppid())\'], '
        "start_new_session=True)\n"
        "print(proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    gateway = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert gateway.stdout is not None
        launcher = psutil.Process(int(gateway.stdout.readline()))
        assert wait_for(lambda: launcher.children(), 30), "the launcher started nothing"
        child = launcher.children()[0]
        assert child.cmdline()[0] == "sleep"
        gateway.kill()
        gateway.wait()
        assert wait_for(lambda: not launcher.is_running() and not child.is_running(), 30)
    finally:
        gateway.kill()
