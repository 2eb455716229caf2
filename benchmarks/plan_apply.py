"""How long `local-ai --help`, `plan` and a converged `apply` take, next to `hf --help`.

Everything runs in one go on this machine: a fake hub on loopback serves a tiny model, one
apply converges a fresh state home, then each command runs `--repeat` times in turn (interleaved,
so machine noise hits all three alike). Reports medians and ratios; writes JSON.

    uv run python -m benchmarks plan [--repeat 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness.fakehub import running_hub
from tests.server_helpers import build_chat_model, free_port

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks plan", description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="local-ai-bench-plan-"))
    try:
        model = build_chat_model(root / "model")
        with running_hub() as hub:
            hub.add_repo_from_dir(
                "mlx-community/bench-chat", model, metadata={"library_name": "mlx"}
            )
            manifest = root / "local-ai.toml"
            manifest.write_text(
                f"version = 1\n[server]\nport = {free_port()}\nautostart = false\n"
                "[benchmark]\non_apply = false\n"
                '[models.chat]\nrepo = "mlx-community/bench-chat"\n'
            )
            env = {
                **os.environ,
                "LOCAL_AI_HOME": str(root / "home"),
                "HF_HOME": str(root / "hf"),
                "HF_ENDPOINT": hub.url,
                "HF_HUB_DISABLE_XET": "1",
                "LOCAL_AI_CONFIG": str(manifest),
                "NO_COLOR": "1",
            }
            local_ai = [sys.executable, "-m", "local_ai"]
            hf = shutil.which("hf", path=str(Path(sys.executable).parent))
            if hf is None:
                raise SystemExit("the `hf` CLI of huggingface_hub is not installed next to python")
            _timed([*local_ai, "apply", "--yes"], env)  # converge once
            commands = {
                "local_ai_help": [*local_ai, "--help"],
                "plan": [*local_ai, "plan", "--detailed-exitcode"],
                "apply_converged": [*local_ai, "apply", "--yes"],
                "hf_help": [hf, "--help"],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.repeat):
                for name, command in commands.items():
                    times[name].append(_timed(command, env))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        **report_header("plan_apply"),
        "repeat": args.repeat,
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "ratio_to_hf_help": {
            k: round(v / medians["hf_help"], 2) for k, v in medians.items() if k != "hf_help"
        },
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }
    for name, value in medians.items():
        print(f"{name:<16} median {value * 1000:7.0f} ms")
    for name, ratio in report["ratio_to_hf_help"].items():  # type: ignore[union-attr]
        print(f"{name:<16} {ratio:.2f}x hf --help")
    out = write_report(report, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
