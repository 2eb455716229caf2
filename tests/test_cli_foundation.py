"""The CLI skeleton: --version, init, validate, doctor, error messages and exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from local_ai import __version__
from local_ai.errors import ExitCode
from tests.clirunner import run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"local-ai {__version__}"


def test_no_arguments_shows_help() -> None:
    result = run_cli()
    assert "Usage" in result.stdout + result.stderr
    assert result.returncode == ExitCode.USAGE


def test_unknown_option_is_a_usage_error() -> None:
    result = run_cli("validate", "--bogus")
    assert result.returncode == ExitCode.USAGE
    assert "No such option" in result.stderr


def test_init_writes_a_valid_manifest_for_this_machine(tmp_path: Path) -> None:
    result = run_cli("init")
    assert result.returncode == 0, result.stderr
    target = Path.home() / ".config" / "local-ai" / "local-ai.toml"
    assert target.exists()
    text = target.read_text()
    # Relative to the manifest, never this machine's absolute path: it works from dotfiles.
    assert text.startswith("#:schema ./local-ai.schema.json\n")
    schema_path = target.parent / "local-ai.schema.json"
    assert json.loads(schema_path.read_text())["title"] == "local-ai.toml"
    assert str(Path.home()) not in text and "file://" not in text
    assert "[models.coder]" in text
    validated = run_cli("validate", "--json")
    assert validated.returncode == 0, validated.stderr
    assert json.loads(validated.stdout)["path"] == str(target)
    # A second init refuses to overwrite and says how.
    again = run_cli("init")
    assert again.returncode == ExitCode.ERROR
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert target.read_text() == text


def test_init_honours_config_and_stdout(tmp_path: Path) -> None:
    target = tmp_path / "custom.toml"
    printed = run_cli("init", "--stdout", "-c", str(target))
    assert printed.returncode == 0
    assert "version = 1" in printed.stdout
    assert not target.exists()
    written = run_cli("init", "-c", str(target))
    assert written.returncode == 0, written.stderr
    assert target.exists()
    # Copied elsewhere with its schema (dotfiles on another machine), the line still resolves.
    elsewhere = tmp_path / "dotfiles"
    elsewhere.mkdir()
    for name in (target.name, "local-ai.schema.json"):
        (elsewhere / name).write_bytes((tmp_path / name).read_bytes())
    ref = (elsewhere / target.name).read_text().splitlines()[0].removeprefix("#:schema ")
    assert json.loads((elsewhere / ref).read_text())["title"] == "local-ai.toml"


def test_validate_reports_every_problem_with_location(tmp_path: Path) -> None:
    bad = tmp_path / "local-ai.toml"
    bad.write_text('[server]\nport = "8080"\n[models.coder]\nrepo = "a/b"\nquantize = "q7"\n')
    result = run_cli("validate", cwd=tmp_path)
    assert result.returncode == ExitCode.CONFIG
    assert f"{bad}:2:1: server.port: expected an integer" in result.stderr
    assert f"{bad}:5:1: models.coder.quantize: 'q7' is not a level" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_example() -> None:
    result = run_cli("validate", "-c", str(REPO_ROOT / "local-ai.toml.example"))
    assert result.returncode == 0, result.stderr
    assert "3 models" in result.stdout


def test_missing_manifest_points_at_init(tmp_path: Path) -> None:
    result = run_cli("validate", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == ExitCode.ERROR
    assert "no manifest at" in result.stderr
    assert "local-ai init" in result.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run_cli("validate", "-c", str(tmp_path / "nope.toml"), env={"LOCAL_AI_DEBUG": "1"})
    assert "Traceback" in result.stderr
    assert "no manifest at" in result.stderr


def test_doctor_json_reports_each_check(tmp_path: Path) -> None:
    manifest = tmp_path / "local-ai.toml"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        manifest.write_text(f'[server]\nport = {port}\n[models.a]\nrepo = "a/b"\n')
        result = run_cli("doctor", "--json", "-c", str(manifest))
    report = json.loads(result.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) >= {
        "platform",
        "python",
        "memory",
        "disk",
        "state home",
        "manifest",
        "port",
        "HF cache",
        "network",
        "mlx",
    }
    assert checks["platform"]["status"] == "warn"  # Linux: CPU backend, labelled as such
    assert "cpu" in checks["platform"]["detail"].lower()
    assert checks["manifest"]["status"] == "pass"
    assert checks["port"]["status"] == "warn"
    assert f"127.0.0.1:{port} is in use" in checks["port"]["detail"]
    assert checks["network"]["status"] == "warn"  # the test endpoint is a dead port
    assert checks["mlx"]["status"] == "pass"
    assert report["ok"] is True
    assert result.returncode == 0


def test_doctor_fails_on_a_broken_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text("[server\n")
    result = run_cli("doctor", "-c", str(manifest))
    assert result.returncode == 1
    assert "manifest" in result.stdout and "fail" in result.stdout
    assert f"{manifest}:1:8: invalid TOML" in result.stdout


def test_doctor_offline_mode_is_reported() -> None:
    result = run_cli("doctor", "--json", env={"HF_HUB_OFFLINE": "1"})
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["network"]["status"] == "info"
    assert "offline" in checks["network"]["detail"]


def test_cli_start_does_not_import_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import local_ai.cli.app; "
        "heavy = [m for m in ('mlx', 'mlx_lm', 'huggingface_hub', 'transformers', 'numpy', "
        "'mlx_omni_server', 'fastapi') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _command_paths(sub, (*path, name))
    return found


def test_every_help_shows_flags_as_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from local_ai.cli.app import _command
    from tests.hub_repos import run_inprocess

    monkeypatch.setenv("COLUMNS", "200")
    commands = _command_paths(_command())
    assert len(commands) > 25  # every group and command, the root included
    typed = 0
    for path, command in commands:
        code, out, err = run_inprocess(capsys, *path, "--help")
        assert code == 0, (path, err)
        assert "<bool>" not in out, (path, out)
        rows = {  # the option's long name -> its row (a required one starts with `*`)
            next(w for w in line.split() if w.startswith("--")): line
            for line in out.splitlines()
            if " --" in line and line.startswith("│")
        }
        for param in command.params:
            long = next((o for o in param.opts if o.startswith("--")), None)
            if long is None or param.param_type_name != "option" or getattr(param, "hidden", False):
                continue  # hidden options are internal (e.g. the daemon's --keep-alias-map)
            row = rows[long]
            if param.is_flag:
                assert "<" not in row.split(long, 1)[1].split("  ")[1], (path, row)
            else:  # options that take a value still name its type
                typed += 1
                assert "<" in row, (path, row)
    assert typed > 10
    # A flag takes no value: `--json true` is a usage error, `--json` alone is accepted.
    code, out, err = run_inprocess(capsys, "validate", "--json", "true")
    assert code == ExitCode.USAGE and "unexpected extra argument" in err, err


def test_detailed_exitcode_is_1_on_any_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.hub_repos import run_inprocess

    broken = tmp_path / "local-ai.toml"
    broken.write_text("version = 1\n[models.chat\n")
    code, _, err = run_inprocess(capsys, "plan", "-c", str(broken))
    assert code == ExitCode.CONFIG, err
    # Terraform's contract for scripts: 0 no changes, 2 changes, 1 on any error.
    for command in (("plan",), ("clients", "diff")):
        code, _, err = run_inprocess(capsys, *command, "--detailed-exitcode", "-c", str(broken))
        assert code == ExitCode.ERROR, (command, err)
        assert "local-ai.toml:2:" in err, err  # the message is still the error's own
        missing = str(tmp_path / "nowhere.toml")
        code, _, err = run_inprocess(capsys, *command, "--detailed-exitcode", "-c", missing)
        assert code == ExitCode.ERROR and "nowhere.toml" in err, (command, err)
    fine = tmp_path / "empty.toml"
    fine.write_text("version = 1\n[server]\nautostart = false\n")
    code, out, err = run_inprocess(capsys, "plan", "--detailed-exitcode", "-c", str(fine))
    assert code == ExitCode.OK, out + err
