"""The wheel users install from PyPI: builds, installs into a fresh venv, and runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _uv() -> str:
    uv = shutil.which("uv")
    assert uv, "uv is required (the CI script installs it)"
    return uv


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    uv = _uv()
    dist = tmp_path / "dist"
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(dist), str(REPO_ROOT)],
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("local_ai-*.whl"))
    assert len(wheels) == 1
    # The web page's files are package data: the page must work from an installed wheel.
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    for asset in ("index.html", "app.js", "app.css", "favicon.svg"):
        assert f"local_ai/server/web/{asset}" in names, asset
    # On Linux the same overrides as pyproject's [tool.uv] drop Omni's audio/image stacks; the
    # lock pins the same versions the tests ran with.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    overrides = tmp_path / "overrides.txt"
    overrides.write_text("\n".join(pyproject["tool"]["uv"]["override-dependencies"]) + "\n")
    constraints = tmp_path / "constraints.txt"
    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    ).stdout
    constraints.write_text(exported)
    venv = tmp_path / "venv"
    subprocess.run(
        [uv, "venv", "--python", sys.executable, str(venv)], check=True, capture_output=True
    )
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--python",
            str(python),
            "--override",
            str(overrides),
            "--constraint",
            str(constraints),
            str(wheels[0]),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    version = subprocess.run(
        [str(venv / "bin" / "local-ai"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("local-ai ")
    # The installed package is the wheel, not this source tree.
    where = subprocess.run(
        [str(python), "-c", "import local_ai, sys; print(local_ai.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert str(venv) in where.stdout
    page = subprocess.run(
        [
            str(python),
            "-c",
            "from local_ai.server import web; print(all(web.asset(p) for p in web.ASSETS))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert page.stdout.strip() == "True", page.stderr
