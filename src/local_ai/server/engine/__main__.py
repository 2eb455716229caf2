"""Engine worker entry point: `python -m local_ai.server.engine --config run/engine.json`.

Started and supervised by the gateway; never run Omni's own `main.py` (it binds 0.0.0.0 and
downloads a spaCy model at import).

With `--standby` it does the slow part first (importing mlx, mlx-lm, transformers and Omni takes
~4 s of CPU), prints `standby` on stdout, and waits for a line on stdin before it reads the config
again and serves: the gateway keeps one such warm process to replace a crashed engine at once.
End of stdin (the gateway is gone) makes it exit.

Under `mlx.launch` (a model sharded across hosts, docs/cluster.md) rank 0 runs with a config
holding `group`, and every other rank runs `--follow GROUP-JSON`: no HTTP, it mirrors rank 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from local_ai.util.atomic import pid_alive

PARENT_CHECK_S = 0.5


def _watch_parent(parent: int, *, direct: bool) -> None:
    """Exit when the gateway is gone (killed with -9, it cannot stop us itself). A sharded
    engine's rank 0 is a child of mlx.launch, not of the gateway: it watches the gateway's pid."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if (os.getppid() != parent) if direct else not pid_alive(parent):
            os._exit(0)


def _setup_logging(debug: bool) -> None:
    # Configured before Omni is imported: its logger would install a Rich handler on the root.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s engine %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # Omni logs prompts and responses at INFO and headers at DEBUG: only with LOCAL_AI_DEBUG.
    logging.getLogger("mlx_omni").setLevel(logging.DEBUG if debug else logging.WARNING)
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _warm_imports() -> None:
    """Everything the first request would otherwise import (engine.models imports lazily)."""
    import mlx.core  # noqa: F401
    import mlx_lm.tokenizer_utils
    import mlx_lm.utils  # noqa: F401
    import mlx_omni_server.chat.anthropic.anthropic_schema
    import mlx_omni_server.chat.mlx.model_types
    import mlx_omni_server.chat.openai.schema  # noqa: F401
    import uvicorn  # noqa: F401

    import local_ai.server.engine.app  # noqa: F401


def _wait_for_promotion() -> bool:
    """Tell the gateway this standby is warm, then wait for its go; False at end of stdin."""
    sys.stdout.write("standby\n")
    sys.stdout.flush()
    line = sys.stdin.buffer.readline()
    # From now on stdout goes to the engine log like stderr (and the gateway's pipe closes).
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return bool(line.strip())


def _connect_early() -> None:
    """Join MLX's group before the slow imports: the ring backend gives up connecting to a
    peer that is not listening after a few seconds."""
    import mlx.core as mx

    mx.distributed.init(strict=True)


def _follow(parser: argparse.ArgumentParser, group_json: str) -> int:
    from local_ai.server.engine.group import follow
    from local_ai.server.engine.scheduler import PREFILL_CHUNK
    from local_ai.server.groupspec import GroupSpec

    try:
        spec = GroupSpec.parse(json.loads(group_json), "--follow")
    except ValueError as exc:
        parser.error(str(exc))
    _setup_logging(spec.debug)
    _connect_early()
    return follow(spec, PREFILL_CHUNK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local-ai-engine")
    roles = parser.add_mutually_exclusive_group(required=True)
    roles.add_argument("--config", type=Path)
    roles.add_argument("--follow", metavar="GROUP", help="a rank > 0 of a sharded engine")
    parser.add_argument("--standby", action="store_true", help="warm up, then wait for stdin")
    args = parser.parse_args(argv)

    # Offline by construction: a model id that is not a local directory must never download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if args.follow is not None:
        return _follow(parser, args.follow)
    raw = json.loads(args.config.read_text(encoding="utf-8"))
    _setup_logging(bool(raw.get("debug")))
    if raw.get("group") is not None:
        _connect_early()
    if raw.get("parent_pid"):
        direct = raw.get("group") is None
        threading.Thread(
            target=_watch_parent, args=(raw["parent_pid"],), kwargs={"direct": direct}, daemon=True
        ).start()
    # Omni's logger module creates ./logs at import; the state home already has one.
    with contextlib.suppress(OSError, KeyError):
        os.chdir(Path(raw["aliases_file"]).parent.parent)
    _warm_imports()
    if args.standby:
        if not _wait_for_promotion():
            return 0
        # Settings may have changed while it waited (restart-engine rewrites the file).
        raw = json.loads(args.config.read_text(encoding="utf-8"))
    from local_ai.convert.chat_template import use_for_transformers
    from local_ai.server.engine.app import EngineApp, EngineConfig

    use_for_transformers()  # model chat templates render under a step and time budget

    config = EngineConfig(**raw)

    import uvicorn

    app = EngineApp(config)
    socket_path = Path(config.socket)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            uds=str(socket_path),
            lifespan="on",
            log_level="debug" if config.debug else "warning",
            access_log=config.debug,
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )
    logging.getLogger("local_ai.engine").info("engine %s listening on %s", os.getpid(), socket_path)
    server.run()
    if config.group is not None:
        os._exit(0)  # a collective may hold the MLX thread; nothing else is left to finish
    return 0


if __name__ == "__main__":
    sys.exit(main())
