"""Several Macs, measured on one: decode rate and time to first token of 1 rank against 2 ranks,
pipeline and tensor parallel, with MLX's own distributed stack, in one run.

    uv run python -m benchmarks cluster                 # table on stdout + JSON in docs/benchmarks/
    uv run python -m benchmarks cluster --tokens 32 --rounds 3

Two ranks run on this machine under `mlx.launch --backend ring` (TCP on 127.0.0.1); each rank
loads its share with mlx-lm's `sharded_load` and decodes with `stream_generate` (greedy, end
tokens ignored, fixed prompt, one warm-up). 1 rank is the same script without the launcher (a
group of one). Launches alternate 1, 2, 1, 2 ranks so both see the same machine load; figures
are medians with min and max. Models, random weights from tests/harness/tinymodels, fp32:
pipeline on a 4-layer deepseek_v2 (mlx-lm 0.31 pipelines DeepSeek, not qwen3), tensor on a
4-layer qwen3 (its 4 KV heads divide over 2 ranks).

The hardware-independent figure is what crosses the link per generated token: computed from the
collectives each mode runs (pipeline: the hidden state sent from stage to stage, then an
all_gather; tensor: two all_sums of the hidden state per layer) and measured from the kernel's
byte counters (TCP_INFO) of rank 0's sockets.

The served path is the same model through our engine, in the same run and interleaved with the
raw cases: 1 rank is the normal engine, 2 ranks the sharded engine started with the gateway's
`mlx.launch` command (rank 0 with --config, rank 1 with --follow); greedy streamed OpenAI chat
completions over the engine's Unix socket: TTFT is a 1-token answer's time, the decode rate
the further tokens of a full answer over the extra time it took. `--no-served`: raw path only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.harness import tinymodels as tm

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report

ROOT = Path(__file__).resolve().parent.parent
MARK = "local-ai-cluster-bench "
PROMPT = "Write a Python function that merges two sorted lists, then explain how it works."
LAUNCH_TIMEOUT_S = 600.0

# mode → (arch, shape): small enough that a 2-rank round stays seconds on a busy 2-core CPU.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "pipeline": (
        "deepseek_v2",
        {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
    ),
    "tensor": (
        "qwen3",
        {
            "hidden_size": 256,
            "num_layers": 4,
            "num_heads": 8,
            "num_kv_heads": 4,
            "head_dim": 32,
            "intermediate_size": 768,
        },
    ),
}

# Published configs (config.json of each repo) of models mlx-lm 0.31 shards both ways, for the
# per-token link figures of real models (qwen3_moe, e.g. Qwen3-235B, has no shard() there).
REAL_MODELS: dict[str, tuple[int, int]] = {  # name → (hidden_size, num_hidden_layers)
    "DeepSeek V3 / Kimi K2": (7168, 61),
    "GLM-4.6": (5120, 92),
}


def link_traffic(mode: str, hidden: int, layers: int, ranks: int, itemsize: int) -> dict[str, int]:
    """Bytes all ranks send per decoded token, and how many collectives each token waits on,
    from mlx-lm 0.31's sharding (batch 1). A ring all_sum of S bytes over N ranks sends
    2(N-1)/N * S per rank; an all_gather sends N-1 pieces per rank."""
    row = hidden * itemsize
    if ranks == 1:
        return {"bytes": 0, "collectives": 0}
    if mode == "pipeline":
        # Each stage sends its hidden state to the next, then all_gather hands rank 0's to all.
        return {"bytes": (ranks - 1) * row + ranks * (ranks - 1) * row, "collectives": ranks}
    # Tensor: attention's o_proj and the MLP's down_proj end in an all_sum in every layer.
    return {"bytes": 2 * layers * 2 * (ranks - 1) * row, "collectives": 2 * layers}


# ---- the worker: one rank, run by mlx.launch (or alone for 1 rank) --------------------------


def _tcp_bytes() -> int | None:
    """Bytes sent + received on this process's TCP sockets (the ring backend's links); None
    where the kernel does not say (no /proc, as on macOS)."""
    if not Path("/proc/self/fd").is_dir() or not hasattr(socket, "TCP_INFO"):
        return None
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.fromfd(int(fd), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
        except OSError:
            continue  # not a TCP socket
        finally:
            sock.close()
        if len(info) >= 208:  # struct tcp_info: bytes_received at 128, bytes_sent at 200
            total += struct.unpack_from("Q", info, 128)[0] + struct.unpack_from("Q", info, 200)[0]
    return total


def worker(mode: str, model_dir: str, tokens: int, repeats: int, rounds: int, go: str) -> None:
    """Load once, then for each round wait for the driver's `go` file and time `repeats`
    streams; rank 0 prints one line per round."""
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.utils import sharded_load

    group = mx.distributed.init()
    started = time.perf_counter()
    if mode == "pipeline":
        model, tokenizer = sharded_load(model_dir, pipeline_group=group)
    else:
        model, tokenizer = sharded_load(model_dir, tensor_group=group)
    load_s = time.perf_counter() - started
    tokenizer.eos_token_ids = set()  # random weights: run every stream to `tokens`
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    if group.rank() == 0:
        print(MARK + json.dumps({"loaded": load_s}), flush=True)
    for round_ in range(rounds):
        while not Path(f"{go}-{round_}").exists():
            time.sleep(0.02)
        for _ in stream_generate(model, tokenizer, prompt, max_tokens=4):
            pass  # warm-up after idling
        samples = []
        for _ in range(repeats):
            out: list[int] = []
            t0 = time.perf_counter()
            first = 0.0
            wire0: int | None = None
            for i, response in enumerate(
                stream_generate(model, tokenizer, prompt, max_tokens=tokens)
            ):
                if i == 0:
                    first, wire0 = time.perf_counter(), _tcp_bytes()
                out.append(int(response.token))
            last, wire1 = time.perf_counter(), _tcp_bytes()
            wire = None if wire0 is None or wire1 is None else (wire1 - wire0) / (tokens - 1)
            samples.append(
                {
                    "ttft_s": first - t0,
                    "decode_tok_s": (tokens - 1) / (last - first),
                    # Between the first and the last token: tokens - 1 forward passes.
                    "wire_bytes_per_token": wire,
                    "tokens": out,
                }
            )
        if group.rank() == 0:
            doc = {"ranks": group.size(), "load_s": load_s, "prompt_tokens": len(prompt)}
            print(MARK + json.dumps(doc | {"samples": samples}), flush=True)


# ---- the driver --------------------------------------------------------------------------------


def build(work: Path, mode: str) -> Path:
    """The mode's tiny model in MLX layout (sharded_load's pipeline path needs its index)."""
    from mlx_lm.convert import convert

    arch, shape = MODELS[mode]
    hf = tm.build_model(work / f"{mode}-hf", arch, **shape)
    out = work / f"{mode}-mlx"
    convert(str(hf), str(out), dtype="float32")  # CPU MoE kernels run float32 only
    return out


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port < 65535:
                with socket.socket() as b:
                    try:
                        b.bind(("127.0.0.1", port + 1))
                    except OSError:
                        continue
                return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class Group:
    """One process group of `ranks` ranks serving one mode, loaded once; each `sample` lets it
    time one round while the other groups wait."""

    def __init__(self, mode: str, model_dir: Path, ranks: int, args: argparse.Namespace) -> None:
        from local_ai.cluster.launch import launcher

        self.name = f"{mode} with {ranks} rank(s)"
        self.go = Path(args.ctl) / f"{mode}-{ranks}"
        self.round = 0
        worker_args = [str(v) for v in (model_dir, args.tokens, args.repeats, args.rounds)]
        cmd = [sys.executable, "-m", "benchmarks.cluster", "--worker", mode, *worker_args]
        cmd.append(str(self.go))
        if ranks == 1:
            argv = cmd
        else:
            # A command, not a file: mlx.launch runs an existing file path as a Python script.
            script = f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(cmd)}"
            argv = [*launcher(), "-n", str(ranks), "--backend", "ring"]
            argv += ["--starting-port", str(free_port_pair()), "--", "sh", "-c", script]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            # A pipe never written: on /dev/null mlx.launch's select loop would never sleep.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # the launcher and its ranks, stopped together
        )
        self.launched = ranks > 1
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail = [*self.tail[-40:], line]
            if MARK in line:
                self.lines.put(line.split(MARK, 1)[1])
        self.lines.put(None)

    def next(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=LAUNCH_TIMEOUT_S)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError(f"{self.name} gave no result:\n{''.join(self.tail)}")
        return dict(json.loads(line))

    def pause(self, stop: bool) -> None:
        """Stop or continue mlx.launch itself (not its ranks): its per-rank loops select on
        the ranks' always-writable stdin and spin, which would load the other groups' rounds."""
        if self.launched:
            os.kill(self.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    def sample(self) -> dict[str, Any]:
        self.pause(False)
        self.go.with_name(f"{self.go.name}-{self.round}").touch()
        self.round += 1
        try:
            return self.next()
        finally:
            self.pause(True)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Served:
    """Our engine serving one mode's model: 1 rank is the normal engine, 2 ranks the sharded
    group (mlx.launch with the gateway's launch command); each `sample` times `repeats`
    streamed OpenAI requests over its Unix socket, as the gateway forwards them."""

    def __init__(self, mode: str, model_dir: Path, ranks: int, args: argparse.Namespace) -> None:
        from local_ai.cluster.launch import free_ports, group_command

        self.name = f"{mode} served with {ranks} rank(s)"
        self.model = str(model_dir)
        self.args = args
        base = Path(args.ctl) / f"served-{mode}-{ranks}"
        (base / "state").mkdir(parents=True)
        self.sock = base / "engine.sock"
        config: dict[str, Any] = {
            "socket": str(self.sock),
            "aliases_file": str(base / "state" / "aliases.json"),
        }
        if ranks == 1:
            aliases = {"models": {"m": {"path": self.model}}}
            (base / "state" / "aliases.json").write_text(json.dumps(aliases))
            # No prefix cache: a group keeps none, and the raw path prefills every time too.
            config |= {"max_loaded_models": 1, "max_batch_size": 4, "prompt_cache": False}
            argv = [sys.executable, "-m", "local_ai.server.engine", "--config"]
            argv.append(str(base / "engine.json"))
        else:
            group = {
                "alias": mode,
                "parallel": mode,
                "hosts": [f"rank{r}" for r in range(ranks)],
                "model_paths": [self.model] * ranks,
                "max_batch_size": 4,
                "debug": False,
            }
            config |= {"parent_pid": os.getpid(), "group": group}
            host = {"ssh": "127.0.0.1", "ips": ["127.0.0.1"], "rdma": []}
            hostfile = {"backend": "ring", "envs": [], "hosts": [host] * ranks}
            (base / "hostfile.json").write_text(json.dumps(hostfile))
            port = free_ports(["127.0.0.1"] * ranks)
            py = shlex.quote(sys.executable)
            argv = group_command(
                base / "hostfile.json", port, [py] * ranks, base / "engine.json", group
            )
        (base / "engine.json").write_text(json.dumps(config))
        self.log = base / "engine.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=base,  # no file named "sh" here, which mlx.launch would run as a script
                stdin=subprocess.PIPE,  # see Group: a pipe never written
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.launched = ranks > 1

    def _client(self) -> Any:
        import httpx

        transport = httpx.HTTPTransport(uds=str(self.sock))
        return httpx.Client(transport=transport, base_url="http://engine", timeout=600.0)

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError), self._client() as client:
                if client.get("/health").status_code == 200:
                    return
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not become healthy:\n{tail}")

    def request(self, max_tokens: int) -> tuple[float, int]:
        """One greedy streamed chat completion: seconds to its end, and tokens generated."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        tokens = 0
        with self._client() as client:
            t0 = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                reply.raise_for_status()
                for line in reply.iter_lines():
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line[6:]).get("usage") or {}
                        tokens = int(usage.get("completion_tokens", tokens))
            return time.perf_counter() - t0, tokens

    def timed(self) -> dict[str, Any]:
        """TTFT is a 1-token answer's time; the decode rate is what `tokens` more cost over it
        (text chunks do not time tokens: the detokenizer holds pieces until a word ends)."""
        for _ in range(5):  # on a busy machine a pause can make the 1-token answer the slower
            one, _ = self.request(1)
            whole, tokens = self.request(self.args.tokens)
            if tokens >= 2 and whole > one:
                break
        else:
            raise RuntimeError(f"{self.name}: {tokens} token(s) in {whole:.3f} s times nothing")
        return {
            "ttft_s": one,
            "decode_tok_s": (tokens - 1) / (whole - one),
            "completion_tokens": tokens,
        }

    def pause(self, stop: bool) -> None:
        if self.launched:
            os.kill(self.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    def sample(self) -> dict[str, Any]:
        self.pause(False)
        try:
            self.request(4)  # warm-up after idling
            samples = [self.timed() for _ in range(self.args.repeats)]
        finally:
            self.pause(True)
        return {"samples": samples}

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _counted(samples: list[dict[str, Any]]) -> list[float]:
    return [s["wire_bytes_per_token"] for s in samples if s["wire_bytes_per_token"] is not None]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(mode: str, runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    arch, shape = MODELS[mode]
    out: dict[str, Any] = {"model": {"arch": arch, **shape, "dtype": "float32"}, "ranks": {}}
    for ranks, reports in runs.items():
        samples = [s for r in reports for s in r["samples"]]
        predicted = link_traffic(mode, shape["hidden_size"], shape["num_layers"], ranks, 4)
        out["ranks"][str(ranks)] = {
            "samples": len(samples),
            "decode_tok_s": spread([s["decode_tok_s"] for s in samples]),
            "ttft_s": spread([s["ttft_s"] for s in samples]),
            "load_s": spread([r["load_s"] for r in reports]),
            "prompt_tokens": reports[0]["prompt_tokens"],
            "link_bytes_per_token": {
                "computed": predicted["bytes"],
                "measured": spread(wires) if (wires := _counted(samples)) else None,
            },
            "collectives_per_token": predicted["collectives"],
        }
    one, two = out["ranks"]["1"], out["ranks"]["2"]
    out["two_over_one"] = {
        "decode": two["decode_tok_s"]["median"] / one["decode_tok_s"]["median"],
        "ttft": two["ttft_s"]["median"] / one["ttft_s"]["median"],
    }
    # Greedy: a sharded model should pick the tokens the whole one does (tensor parallel sums
    # in another order, so a near tie may flip in fp32).
    out["same_tokens_as_one_rank"] = (
        runs[1][0]["samples"][0]["tokens"] == (runs[2][0]["samples"][0]["tokens"])
    )
    return out


def summarise_served(
    runs: dict[int, list[dict[str, Any]]], raw: dict[int, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Our engine's figures per rank count, and what they are against mlx-lm's raw path."""
    out: dict[str, Any] = {"ranks": {}}
    for ranks, reports in runs.items():
        samples = [s for r in reports for s in r["samples"]]
        raw_rate = statistics.median(s["decode_tok_s"] for r in raw[ranks] for s in r["samples"])
        rate = spread([s["decode_tok_s"] for s in samples])
        out["ranks"][str(ranks)] = {
            "samples": len(samples),
            "decode_tok_s": rate,
            "ttft_s": spread([s["ttft_s"] for s in samples]),
            "completion_tokens": spread([s["completion_tokens"] for s in samples]),
            "decode_over_raw": rate["median"] / raw_rate,
        }
    one, two = out["ranks"]["1"], out["ranks"]["2"]
    out["two_over_one"] = {
        "decode": two["decode_tok_s"]["median"] / one["decode_tok_s"]["median"],
        "ttft": two["ttft_s"]["median"] / one["ttft_s"]["median"],
    }
    return out


def uptime() -> str:
    """`uptime`'s line: how busy the shared machine was."""
    try:
        done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks cluster", description=__doc__)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="1-rank/2-rank launch pairs")
    parser.add_argument("--repeats", type=int, default=2, help="timed streams per launch")
    parser.add_argument("--modes", default="pipeline,tensor", help="comma-separated")
    parser.add_argument(
        "--no-served",
        dest="served",
        action="store_false",
        help="only mlx-lm's raw path, not our engine in front of it",
    )
    parser.add_argument("--out", type=Path, help="JSON output (default: docs/benchmarks/)")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, model_dir, tokens, repeats, rounds, go = args.worker
        worker(mode, model_dir, int(tokens), int(repeats), int(rounds), go)
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODELS))
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    load_before = uptime()
    started = time.monotonic()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {m: {1: [], 2: []} for m in modes}
    served: dict[str, dict[int, list[dict[str, Any]]]] = {m: {1: [], 2: []} for m in modes}
    with tempfile.TemporaryDirectory(prefix="local-ai-bench-cluster-") as tmp:
        args.ctl = tmp
        dirs = {m: build(Path(tmp), m) for m in modes}
        groups: dict[tuple[str, str, int], Group | Served] = {}
        try:
            for m in modes:
                for n in (1, 2):
                    groups[("raw", m, n)] = Group(m, dirs[m], n, args)
                    if args.served:
                        groups[("served", m, n)] = Served(m, dirs[m], n, args)
            for group in groups.values():
                if isinstance(group, Group):
                    group.next()  # loaded
                else:
                    group.wait_ready()
                group.pause(True)
            for round_ in range(args.rounds):
                # raw 1, 2, served 1, 2 ranks per mode: noise hits all alike
                order = sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2]))
                for (path, mode, ranks), group in order:
                    report = group.sample()
                    (runs if path == "raw" else served)[mode][ranks].append(report)
                    rates = ", ".join(f"{s['decode_tok_s']:.1f}" for s in report["samples"])
                    print(f"round {round_ + 1} {group.name}: {rates} tok/s", file=sys.stderr)
        finally:
            for group in groups.values():
                group.stop()

    import mlx.core as mx
    import mlx_lm

    report_doc: dict[str, Any] = {
        **report_header("cluster"),
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "seconds": round(time.monotonic() - started, 1),
        "versions": {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__},
        "setup": "mlx.launch -n 2 --backend ring on 127.0.0.1 (CPU); 1 rank without the launcher",
        "tokens_per_stream": args.tokens,
        "rounds": args.rounds,
        "repeats_per_launch": args.repeats,
        "prompt": PROMPT,
        "modes": {m: summarise(m, runs[m]) for m in modes},
        "served": {m: summarise_served(served[m], runs[m]) for m in modes} if args.served else None,
        "link_bytes_per_token_real_models_bf16": {
            name: {
                mode: link_traffic(mode, hidden, layers, 2, 2) for mode in ("pipeline", "tensor")
            }
            for name, (hidden, layers) in REAL_MODELS.items()
        },
    }
    out = args.out or ROOT / "docs" / "benchmarks" / f"cluster-{time.strftime('%Y%m%d-%H%M')}.json"
    path = write_report(report_doc, out)
    print_table(report_doc)
    print(f"\nwrote {path}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"1 rank vs 2 ranks, ring on loopback ({report['tokens_per_stream']} tok)")
    for name in ("mode", "ranks", "decode tok/s", "TTFT s", "link B/token computed", "measured"):
        table.add_column(name, justify="right")
    for mode, doc in report["modes"].items():
        for ranks, row in doc["ranks"].items():
            rate, ttft, link = row["decode_tok_s"], row["ttft_s"], row["link_bytes_per_token"]
            table.add_row(
                f"{mode} ({doc['model']['arch']})",
                ranks,
                f"{rate['median']:.1f} ({rate['min']:.1f}–{rate['max']:.1f})",
                f"{ttft['median']:.3f} ({ttft['min']:.3f}–{ttft['max']:.3f})",
                str(link["computed"]),
                f"{link['measured']['median']:.0f}" if link["measured"] else "-",
            )
    Console().print(table)
    for mode, doc in (report["served"] or {}).items():
        for ranks, row in doc["ranks"].items():
            rate, ttft = row["decode_tok_s"], row["ttft_s"]
            print(
                f"{mode} served, {ranks} rank(s): {rate['median']:.1f} tok/s "
                f"({rate['min']:.1f}–{rate['max']:.1f}, {row['decode_over_raw']:.2f}x raw), "
                f"TTFT {ttft['median']:.3f} s ({ttft['min']:.3f}–{ttft['max']:.3f})"
            )
    for mode, doc in report["modes"].items():
        ratio = doc["two_over_one"]
        print(
            f"{mode}: 2 ranks / 1 rank decode {ratio['decode']:.2f}x, TTFT {ratio['ttft']:.2f}x; "
            f"same greedy tokens: {doc['same_tokens_as_one_rank']}"
        )
    print(f"machine: {report['uptime_before']} → {report['uptime_after']}")


if __name__ == "__main__":
    sys.exit(main())
