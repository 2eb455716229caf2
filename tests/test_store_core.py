"""Store entries appear whole or not at all; the apply lock refuses a second writer by name."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from local_ai import settings
from local_ai.errors import ConfigError, LockHeldError
from local_ai.store.layout import Store, entry_digest, safe_name
from local_ai.store.locks import apply_lock
from local_ai.store.state import InstalledModel, State, load_state, save_state


def test_digest_ignores_key_order() -> None:
    a = entry_digest({"repo": "a/b", "commit": "1" * 40, "recipe": {"q": 4, "g": 64}})
    b = entry_digest({"recipe": {"g": 64, "q": 4}, "commit": "1" * 40, "repo": "a/b"})
    assert a == b
    assert a != entry_digest({"repo": "a/b", "commit": "2" * 40, "recipe": {"q": 4, "g": 64}})


def test_safe_name() -> None:
    assert safe_name("mlx-community/Qwen3-8B") == "mlx-community--Qwen3-8B"
    assert "/" not in safe_name("../../etc/passwd")
    assert not safe_name("../../etc/passwd").startswith(".")


def test_build_renames_into_place() -> None:
    store = Store(settings.paths())
    with store.build("abc123", "org/m", {"source": "org/m"}) as staging:
        (staging / "weights.safetensors").write_bytes(b"x")
        assert store.get("abc123", "org/m") is None  # not visible while building
    entry = store.get("abc123", "org/m")
    assert entry is not None
    assert entry.provenance["source"] == "org/m"
    assert (entry.path / "weights.safetensors").read_bytes() == b"x"
    assert list(settings.paths().staging.iterdir()) == []
    store.remove(entry)
    assert store.get("abc123", "org/m") is None
    assert store.entries() == []


def test_failed_build_leaves_nothing() -> None:
    store = Store(settings.paths())
    with pytest.raises(RuntimeError), store.build("d", "m", {}) as staging:
        (staging / "half.bin").write_bytes(b"half")
        raise RuntimeError("converter crashed")
    assert store.entries() == []
    assert list(settings.paths().staging.iterdir()) == []


def test_killed_build_is_a_leftover_not_an_entry() -> None:
    paths = settings.paths()
    script = (
        "import os\n"
        "from local_ai import settings\n"
        "from local_ai.store.layout import Store\n"
        "with Store(settings.paths()).build('k1', 'm', {}) as s:\n"
        "    (s / 'part').write_bytes(b'x')\n"
        "    os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    store = Store(paths)
    assert store.entries() == []
    leftovers = store.leftovers()
    assert len(leftovers) == 1
    assert store.clean_leftovers() == leftovers
    assert list(paths.staging.iterdir()) == []


def test_state_roundtrip_and_serial() -> None:
    path = settings.paths().state_file
    state = load_state(path)
    assert state.serial == 0 and state.models == {}
    model = InstalledModel(
        alias="coder", source="a/b", format="mlx", location="/x", location_kind="hf-cache"
    )
    written = save_state(path, state.model_copy(update={"models": {"coder": model}}))
    assert written.serial == 1
    again = load_state(path)
    assert again.serial == 1 and again.models["coder"].location == "/x"
    assert save_state(path, again).serial == 2


def test_corrupt_state_names_the_file() -> None:
    path = settings.paths().state_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"version": 1, "serial": "x"')
    with pytest.raises(ConfigError) as info:
        load_state(path)
    assert info.value.path == path
    assert "move state.json aside" in (info.value.hint or "")
    path.write_text(json.dumps({"version": 7}))
    with pytest.raises(ConfigError):
        load_state(path)


def _hold(
    lock_path: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    with apply_lock(Path(lock_path), command="local-ai apply (test holder)"):
        ready.set()
        stop.wait(30)


def test_second_writer_is_refused_naming_the_holder() -> None:
    lock_path = settings.paths().apply_lock
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(lock_path), ready, stop))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockHeldError) as info, apply_lock(lock_path):
            pass
        assert f"pid {holder.pid} (local-ai apply (test holder))" in str(info.value)
        assert "--lock-timeout" in (info.value.hint or "")
    finally:
        stop.set()
        holder.join(30)
    with apply_lock(lock_path, timeout=30):
        pass  # free again once the holder is gone
    assert State().serial == 0
