"""plan / apply / rollback / watch end to end: the real CLI in subprocesses, the real
huggingface_hub client against the fake hub, real conversions and the real server daemon."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.fakehub import FakeHub
from tests.projects import HF, MLX, Project
from tests.server_helpers import wait_for

MODELS = f"""
[models.chat]
repo = "{MLX}"
context = 4096
[models.conv]
repo = "{HF}"
quantize = "fp16"
context = 4096
"""


def _plan_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_apply_builds_serves_converges_rebuilds_one_and_rolls_back(
    tiny_hub: FakeHub, project: Project
) -> None:
    project.write(MODELS, bench=True)
    first = project.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "+ model.chat  (new model)" in first.stdout and "start-server" in first.stdout
    assert "Apply complete" in first.stdout and "Generation 1" in first.stdout
    # The server answers by alias, from the HF cache snapshot and from the store.
    assert project.chat("chat").status_code == 200
    assert project.chat("conv").status_code == 200
    served = project.served_paths()
    assert "/snapshots/" in served["chat"] and str(project.home / "store") in served["conv"]
    lock = (project.dir / "local-ai.lock").read_text()
    assert MLX in lock and HF in lock and 'quantize = "fp16"' in lock
    benchmarks = project.state()["benchmarks"]
    assert isinstance(benchmarks, list)
    assert {b["alias"] for b in benchmarks} == {"chat", "conv"}

    # A second apply right away is a no-op: nothing fetched, nothing converted.
    tiny_hub.clear_requests()
    again = project.cli("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    assert not [r for r in tiny_hub.requests if r.kind == "file"]

    # Reordered keys and comments: still nothing to do.
    project.write(
        "# my models\n" + MODELS.replace("context = 4096\n[models.conv]", "[models.conv]"),
        bench=True,
    )
    project.manifest.write_text(
        project.manifest.read_text().replace(
            f'repo = "{MLX}"\n', f'repo = "{MLX}"\ncontext = 4096\n', 1
        )
    )
    assert project.cli("plan", "--detailed-exitcode").returncode == 0

    # quantize fp16 → q8: exactly one rebuild and an alias reload, no engine restart.
    project.write(MODELS.replace('"fp16"', '"q8"'))
    plan = project.cli("plan", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    lines = _plan_lines(plan.stdout)
    assert "-/+ model.conv  (quantize fp16 → q8)" in lines
    assert sum(1 for line in lines if line.strip().startswith("convert")) == 1
    assert any(line.strip() == "reload-aliases" for line in lines)
    assert not any("restart-engine" in line or "fetch" in line.split() for line in lines)
    old_conv = served["conv"]
    applied = project.cli("apply", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Generation 2" in applied.stdout
    new_conv = project.served_paths()["conv"]
    assert new_conv != old_conv and new_conv.endswith("-q8")
    assert project.chat("conv").status_code == 200

    # rollback serves generation 1 again; plan shows the drift; apply returns.
    listed = project.cli("generations", "--json")
    assert [g["number"] for g in json.loads(listed.stdout)["generations"]] == [1, 2]
    back = project.cli("rollback")
    assert back.returncode == 0, back.stderr
    assert project.served_paths()["conv"] == old_conv
    assert project.chat("conv").status_code == 200
    drift = project.cli("plan", "--detailed-exitcode")
    assert drift.returncode == 2 and "reload-aliases" in drift.stdout
    assert "serving generation 1 since a rollback" in drift.stdout

    # An engine setting restarts the engine only (the server keeps its pid).
    pid = json.loads((project.home / "run" / "server.json").read_text())["pid"]
    project.write(MODELS.replace('"fp16"', '"q8"'), engine="max_loaded_models = 1")
    plan = project.cli("plan")
    assert "server.engine.max_loaded_models 2 → 1" in plan.stdout
    assert "restart-engine" in plan.stdout and "restart-server" not in plan.stdout
    assert project.cli("apply", "--yes").returncode == 0
    assert json.loads((project.home / "run" / "server.json").read_text())["pid"] == pid
    assert project.served_paths()["conv"] == new_conv
    assert project.cli("plan", "--detailed-exitcode").returncode == 0
    assert project.chat("conv").status_code == 200


def test_apply_asks_and_refuses_without_a_terminal(tiny_hub: FakeHub, project: Project) -> None:
    project.write(MODELS, server="autostart = false")
    result = project.cli("apply")
    assert result.returncode == 64
    assert "--yes" in result.stderr
    assert not (project.home / "state.json").exists()
    assert not (project.dir / "local-ai.lock").exists()


def claude_settings(tmp_path: Path) -> Path:
    """The user's Claude Code settings (HOME is tmp_path/user-home), with a setting of theirs."""
    claude = tmp_path / "user-home" / ".claude" / "settings.json"
    claude.parent.mkdir(parents=True)
    claude.write_text('{\n  "theme": "dark"\n}\n')
    return claude


def test_saved_plan_applies_and_a_stale_one_is_refused(
    tiny_hub: FakeHub, project: Project, tmp_path: Path
) -> None:
    claude = claude_settings(tmp_path)
    with_client = MODELS + '[clients.claude_code]\nmodel = "chat"\n'
    project.write(with_client, server="autostart = false")
    saved = project.dir / "plan.json"
    made = project.cli("plan", "--out", str(saved))
    assert made.returncode == 0, made.stderr
    assert saved.stat().st_mode & 0o777 == 0o600  # it holds the settings files' text
    # The manifest changes after the plan was made: refused, nothing done.
    project.write(with_client.replace('"fp16"', '"q8"'), server="autostart = false")
    stale = project.cli("apply", str(saved))
    assert stale.returncode == 1
    assert "stale plan" in stale.stderr and "local-ai plan" in stale.stderr
    assert not (project.home / "state.json").exists()
    # A client's settings file changes after the plan was made: refused too.
    project.write(with_client, server="autostart = false")
    assert project.cli("plan", "--out", str(saved)).returncode == 0
    claude.write_text('{\n  "theme": "light"\n}\n')
    edited = project.cli("apply", str(saved))
    assert edited.returncode == 1 and "client's settings" in edited.stderr
    assert claude.read_text() == '{\n  "theme": "light"\n}\n'
    # A fresh plan applies as saved: the client file gets exactly the text the plan holds.
    assert project.cli("plan", "--out", str(saved)).returncode == 0
    (edit,) = json.loads(saved.read_text())["client_changes"]["client.claude-code"]["edits"]
    applied = project.cli("apply", str(saved))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert set(json.loads((project.home / "state.json").read_text())["models"]) == {"chat", "conv"}
    assert edit["before"] == '{\n  "theme": "light"\n}\n'
    assert claude.read_text() == edit["after"]
    assert json.loads(claude.read_text())["env"]["ANTHROPIC_MODEL"] == "chat"


def test_frozen_uses_only_the_lock(tiny_hub: FakeHub, project: Project) -> None:
    project.write(MODELS, server="autostart = false")
    missing = project.cli("plan", "--frozen")
    assert missing.returncode == 1
    assert "local-ai.lock" in missing.stdout and "local-ai lock" in missing.stdout
    assert project.cli("lock").returncode == 0
    frozen = project.cli("apply", "--yes", "--frozen")
    assert frozen.returncode == 0, frozen.stdout + frozen.stderr
    # The repo moves on; --frozen stays on the locked commit.
    tiny_hub.commit(MLX, {"README.md": "new\n"}, message="moved")
    assert project.cli("plan", "--frozen", "--detailed-exitcode").returncode == 0


def test_a_failed_model_skips_its_dependents_and_a_rerun_converges(
    tiny_hub: FakeHub, project: Project
) -> None:
    project.write(MODELS, server="autostart = false")
    # A connection reset mid-file on every attempt (huggingface_hub does not retry it).
    tiny_hub.inject("drop_connection", repo_id=HF, target="file", path="model.safetensors", at=1000)
    first = project.cli("apply", "--yes")
    assert first.returncode == 1
    assert "✗ fetch:conv" in first.stderr
    assert "convert:conv skipped" in first.stderr and "install:conv skipped" in first.stderr
    assert "✓ install:chat" in first.stderr  # the independent model still installed
    assert set(project.state()["models"]) == {"chat"}  # type: ignore[arg-type]
    tiny_hub.clear_faults()
    rerun = project.cli("apply", "--yes")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "model.chat  (up to date" in rerun.stdout
    assert set(project.state()["models"]) == {"chat", "conv"}  # type: ignore[arg-type]
    assert project.cli("plan", "--detailed-exitcode").returncode == 0


# Ctrl-C in every phase: tests/test_ctrl_c.py.
@pytest.mark.parametrize("stage", ["fetch", "convert"])
def test_kill_during_apply_then_rerun_converges(
    tiny_hub: FakeHub, project: Project, stage: str
) -> None:
    project.write(MODELS, server="autostart = false")
    if stage == "fetch":
        tiny_hub.inject("slow", repo_id=HF, bytes_per_second=64 * 1024, max_seconds=30)
    proc = project.popen("apply", "--yes")
    marker = f"→ {stage}:conv"
    seen: list[str] = []

    def reached() -> bool:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        seen.append(line)
        return marker in line or proc.poll() is not None

    assert wait_for(reached, timeout=120), "".join(seen)
    time.sleep(0.5 if stage == "fetch" else 0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    tiny_hub.clear_faults()
    # Whatever was half-built is not in view: no staging leftovers once a new apply starts,
    # and every store entry that exists is complete.
    rerun = project.cli("apply", "--yes")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    store = project.home / "store"
    entries = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert entries and all((p / ".local-ai.json").is_file() for p in entries)
    assert all((p / "config.json").is_file() for p in entries)
    assert project.cli("plan", "--detailed-exitcode").returncode == 0


def test_a_model_deleted_out_of_band_is_shown_and_rebuilt(
    tiny_hub: FakeHub, project: Project
) -> None:
    import shutil

    project.write(MODELS, server="autostart = false")
    assert project.cli("apply", "--yes").returncode == 0
    conv = Path(project.state()["models"]["conv"]["location"])  # type: ignore[index]
    shutil.rmtree(conv)
    drift = project.cli("plan", "--detailed-exitcode")
    assert drift.returncode == 2
    assert "-/+ model.conv  (store entry missing on disk" in drift.stdout
    assert "= model.chat" in drift.stdout
    repaired = project.cli("apply", "--yes")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert (conv / "config.json").is_file(), repaired.stdout  # same inputs, same address
    assert project.cli("plan", "--detailed-exitcode").returncode == 0


def test_prune_removes_what_the_manifest_dropped(tiny_hub: FakeHub, project: Project) -> None:
    project.write(MODELS, server="autostart = false")
    assert project.cli("apply", "--yes").returncode == 0
    only_chat = MODELS.split("[models.conv]")[0]
    project.write(only_chat, server="autostart = false")
    kept = project.cli("plan", "--detailed-exitcode")
    assert kept.returncode == 0 and "apply --prune" in kept.stdout
    pruned = project.cli("apply", "--yes", "--prune")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "- model.conv  (not in manifest)" in pruned.stdout
    assert set(project.state()["models"]) == {"chat"}  # type: ignore[arg-type]
    assert "org/tiny-chat" not in (project.dir / "local-ai.lock").read_text()


def test_watch_applies_edits_and_keeps_the_last_good_manifest(
    tiny_hub: FakeHub, project: Project
) -> None:
    only_chat = MODELS.split("[models.conv]")[0]
    project.write(only_chat, server="autostart = false")
    proc = project.popen("apply", "--watch", "--yes")
    out: list[str] = []

    def saw(text: str, timeout: float = 90) -> bool:
        assert proc.stdout is not None

        def step() -> bool:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            out.append(line)
            return text in line or proc.poll() is not None

        return any(text in line for line in out) or wait_for(step, timeout)

    try:
        assert saw("waiting for changes"), "".join(out)
        out.clear()
        # An editor's truncate-then-write: one round.
        with project.manifest.open("r+") as f:
            text = f.read()
            f.seek(0)
            f.truncate()
            f.flush()
            time.sleep(0.05)
            f.write(text + MODELS.split(only_chat)[1])
        assert saw("waiting for changes"), "".join(out)
        assert "install:conv" in "".join(out)
        out.clear()
        # A broken save keeps the last good manifest and says so.
        project.manifest.write_text(project.manifest.read_text() + "\n[models.bad\n")
        assert saw("has errors"), "".join(out)
        assert "local-ai.toml" in "".join(out)
        assert set(project.state()["models"]) == {"chat", "conv"}  # type: ignore[arg-type]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 130  # Ctrl-C


def test_models_add_edits_the_manifest_keeping_comments_and_applies(
    tiny_hub: FakeHub, project: Project
) -> None:
    project.write("# chat models below\n", server="autostart = false")
    before = project.manifest.read_text()
    added = project.cli("models", "add", HF, "--quantize", "fp16", "--yes")
    assert added.returncode == 0, added.stdout + added.stderr
    text = project.manifest.read_text()
    assert text.startswith(before) and "# chat models below" in text
    assert '[models.tiny-chat]\nrepo = "org/tiny-chat"\nquantize = "fp16"' in text
    assert "+ model.tiny-chat  (new model)" in added.stdout
    assert set(project.state()["models"]) == {"tiny-chat"}  # type: ignore[arg-type]
    # The same alias again is refused and nothing changes.
    again = project.cli("models", "add", HF, "--yes")
    assert again.returncode == 64 and "--alias" in again.stderr
    assert project.manifest.read_text() == text
    # Not a repo, GGUF or path: a clear error pointing at search.
    bad = project.cli("models", "add", "qwen coder", "--yes")
    assert bad.returncode == 64 and "models search" in bad.stderr
    # Without a terminal and without --yes: the edit stays, nothing is applied.
    pending = project.cli("models", "add", MLX, "--alias", "chat")
    assert pending.returncode == 64 and "--yes" in pending.stderr
    assert "[models.chat]" in project.manifest.read_text()
    assert set(project.state()["models"]) == {"tiny-chat"}  # type: ignore[arg-type]


def test_apply_writes_client_configs_and_repairs_their_drift(
    tiny_hub: FakeHub, project: Project, tmp_path: Path
) -> None:
    claude = claude_settings(tmp_path)
    with_clients = MODELS + '[clients.claude_code]\nmodel = "chat"\nhaiku = "conv"\n'
    project.write(with_clients, server="autostart = false")
    plan = project.cli("plan")
    assert "client.claude-code" in plan.stdout and "write-client" in plan.stdout
    first = project.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    written = json.loads(claude.read_text())
    assert written["theme"] == "dark"  # the user's own settings stay
    env = written["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{project.port}/anthropic"
    assert env["ANTHROPIC_MODEL"] == "chat" and env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "conv"
    assert project.cli("plan", "--detailed-exitcode").returncode == 0

    # Someone edits the file: drift is shown and the next apply repairs only our keys.
    written["env"]["ANTHROPIC_MODEL"] = "other"
    written["verbose"] = True
    claude.write_text(json.dumps(written, indent=2))
    drift = project.cli("plan", "--detailed-exitcode")
    assert drift.returncode == 2 and "~ client.claude-code" in drift.stdout
    assert project.cli("apply", "--yes").returncode == 0
    repaired = json.loads(claude.read_text())
    assert repaired["env"]["ANTHROPIC_MODEL"] == "chat" and repaired["verbose"] is True

    # The manifest drops the client: local-ai takes back what it wrote and gives back the
    # value it replaced (the user's "other"), nothing else.
    project.write(MODELS, server="autostart = false")
    dropped = project.cli("apply", "--yes")
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert "- client.claude-code" in dropped.stdout
    left = json.loads(claude.read_text())
    assert left == {"theme": "dark", "verbose": True, "env": {"ANTHROPIC_MODEL": "other"}}


def test_quantize_auto_picks_a_level_for_this_machine_and_records_it(
    tiny_hub: FakeHub, project: Project
) -> None:
    auto = f'[models.conv]\nrepo = "{HF}"\nquantize = "auto"\ncontext = 4096\n'
    project.write(auto, server="autostart = false")
    plan = project.cli("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    # The tiny fp32 source fits at the best quality auto offers without upcasting past 16 bits.
    assert "auto → bf16" in plan.stdout and "safetensors → mlx bf16" in plan.stdout
    applied = project.cli("apply", "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    model = project.state()["models"]["conv"]  # type: ignore[index]
    assert model["location"].endswith("-bf16") and model["quantization"] == "bf16"
    lock = (project.dir / "local-ai.lock").read_text()
    assert 'quantize = "auto"' in lock and 'chosen = "bf16"' in lock
    again = project.cli("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout
    assert "= model.conv  (up to date (" in again.stdout and "auto: bf16" in again.stdout
