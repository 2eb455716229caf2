"""Engine worker entry point: `python -m local_ai.server.engine --config run/engine.json`.

Started and supervised by the gateway; never run Omni's own `main.py` (it binds 0.0.0.0 and
downloads a spaCy model at import).
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

PARENT_CHECK_S = 0.5


def _watch_parent(parent: int) -> None:
    """Exit when the gateway is gone (killed with -9, it cannot stop us itself)."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local-ai-engine")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)

    # Offline by construction: a model id that is not a local directory must never download.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    raw = json.loads(args.config.read_text(encoding="utf-8"))
    _setup_logging(bool(raw.get("debug")))
    from local_ai.convert.chat_template import use_for_transformers
    from local_ai.server.engine.app import EngineApp, EngineConfig

    use_for_transformers()  # model chat templates render under a step and time budget

    config = EngineConfig(**raw)
    # Omni's logger module creates ./logs at import; the state home already has one.
    with contextlib.suppress(OSError):
        os.chdir(Path(config.aliases_file).parent.parent)
    if config.parent_pid:
        threading.Thread(target=_watch_parent, args=(config.parent_pid,), daemon=True).start()

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
