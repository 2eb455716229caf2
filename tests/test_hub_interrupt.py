"""A fetch killed with SIGKILL in a real process, then rerun: it completes, verified, and
transfers again only the file that was in flight (finished files are kept, the killed download's
`*.incomplete` is cleaned)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys

from local_ai.hub.fetch import fetch
from local_ai.hub.progress import RecordingProgress
from local_ai.hub.resolve import repo_cache_dir, resolve
from local_ai.manifest.models import ModelSpec
from tests.harness.fakehub import FakeHub
from tests.hub_repos import MLX_REPO, add_mlx_repo, model_files
from tests.server_helpers import wait_for

SLOW = "model-00003-of-00003.safetensors"
SHARD_SIZE = 400_000

FETCH_SCRIPT = """
import sys
from local_ai.hub.fetch import fetch
from local_ai.hub.resolve import resolve
from local_ai.manifest.models import ModelSpec
fetch(resolve("coder", ModelSpec(repo=sys.argv[1])))
print("finished")
"""


def test_sigkill_during_fetch_then_rerun_completes_without_refetching_finished_files(
    fake_hub: FakeHub,
) -> None:
    add_mlx_repo(fake_hub, files=model_files(quantized=True, shards=3, size=SHARD_SIZE))
    # One shard trickles (20 s, bounded to 60 s) so the kill lands while it is being written.
    fake_hub.inject(
        "slow", path=SLOW, target="file", methods=("GET",), bytes_per_second=20_000, max_seconds=60
    )
    storage = repo_cache_dir(MLX_REPO)
    # The environment already points at the fake hub and this test's HF_HOME / LOCAL_AI_HOME.
    proc = subprocess.Popen(
        [sys.executable, "-c", FETCH_SCRIPT, MLX_REPO],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    snapshots = storage / "snapshots"

    def others_done_and_slow_partial() -> bool:
        linked = {p.name for p in snapshots.glob("*/*")}
        # huggingface_hub buffers up to 10 MB in memory: the partial file may still be empty.
        partial = list(storage.glob("blobs/*.incomplete"))
        return (len(linked) == 6 and SLOW not in linked and bool(partial)) or (
            proc.poll() is not None
        )

    try:
        assert wait_for(others_done_and_slow_partial, 60), "no partial download seen"
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    killed_partial = list(storage.glob("blobs/*.incomplete"))
    assert killed_partial  # what kill -9 leaves behind
    assert not any(p.name == SLOW for p in snapshots.glob("*/*"))  # nothing half-written in view
    fake_hub.clear_faults()
    fake_hub.clear_requests()

    resolved = resolve("coder", ModelSpec(repo=MLX_REPO))
    progress = RecordingProgress()
    result = fetch(resolved, progress=progress)

    assert progress.planned == {SLOW: fake_hub.entry(MLX_REPO, SLOW).blob.size}
    assert {r.file for r in fake_hub.file_requests("GET")} == {SLOW}
    assert set(result.cleaned) == set(killed_partial)
    assert list(storage.glob("blobs/*.incomplete")) == []
    assert {f.name for f in result.files} == {f.name for f in resolved.files}
    for item in result.files:
        expected = fake_hub.entry(MLX_REPO, item.name).blob.sha256
        assert hashlib.sha256((result.path / item.name).read_bytes()).hexdigest() == expected
