"""What every huggingface_hub call needs: endpoint, cache and token read now, bounded retries of
transient failures, and one translation of the client's exceptions into local-ai's errors.

huggingface_hub reads HF_ENDPOINT, HF_HOME and the token path once, at import; local-ai passes
them explicitly on every call so a long-lived process (and each test) sees the current values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from local_ai import settings
from local_ai.errors import (
    AccessDeniedError,
    LocalAIError,
    NotFoundError,
    OfflineError,
    UnavailableError,
)

T = TypeVar("T")

# Seconds to wait before the 2nd, 3rd... attempt. Tests set this to zeros.
RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0)
MAX_RETRY_AFTER = 30.0
_TRANSIENT_STATUS = frozenset((408, 429, 500, 502, 503, 504))
_LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"


@dataclass(frozen=True)
class Where:
    """What a call was about, for error messages."""

    repo: str
    revision: str | None = None
    file: str | None = None
    alias: str | None = None

    def key(self, field: str) -> str:
        return f"models.{self.alias}.{field}" if self.alias else field


def endpoint() -> str:
    return settings.hf_endpoint()


def cache_dir() -> Path:
    return settings.hf_hub_cache()


def token() -> str | bool:
    """The token to pass; False (not None) when there is none, so the client does not fall back
    to the token path it froze at import."""
    return settings.hf_token() or False


def api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token())


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """Network trouble or hub overload that a later attempt may not meet."""
    import httpx
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, httpx.ProxyError)
    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        return False
    if isinstance(exc, HfHubHTTPError):
        return status_of(exc) in _TRANSIENT_STATUS
    if isinstance(exc, LocalEntryNotFoundError):
        # The client wraps a failed HEAD this way; its cause says whether it was transient.
        cause = exc.__cause__
        return cause is not None and is_transient(cause)
    # The client's own size check: the bytes that arrived were not the bytes announced.
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        return min(float(headers.get("Retry-After")), MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return None


def with_retries(
    call: Callable[[], T],
    *,
    where: Where,
    what: str,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run `call`; retry transient failures a bounded number of times; translate errors."""
    attempts = len(RETRY_DELAYS) + 1
    for attempt in range(attempts):
        try:
            return call()
        except LocalAIError:
            raise
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts - 1:
                error = translate(exc, where, what=what, attempts=attempt + 1)
                if error is None:
                    raise
                raise error from exc
            if on_retry is not None:
                on_retry(exc)
            delay = RETRY_DELAYS[attempt]
            hinted = retry_after(exc)
            time.sleep(max(delay, hinted) if hinted is not None and delay > 0 else delay)
    raise AssertionError("unreachable")


def translate(
    exc: BaseException, where: Where, *, what: str, attempts: int = 1
) -> LocalAIError | None:
    """One local-ai error for what huggingface_hub or httpx raised; None for anything else
    (a bug should surface as one)."""
    import httpx
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, LocalAIError):
        return exc
    hub = endpoint()
    # GatedRepoError subclasses RepositoryNotFoundError: test it first.
    if isinstance(exc, GatedRepoError):
        return AccessDeniedError(
            f"{where.repo} is a gated repo and the hub refused access",
            hint=f"accept its terms at {hub}/{where.repo}, then {_LOGIN_HINT}",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return NotFoundError(
            f"repo {where.repo} was not found on {hub}",
            hint=f"check {where.key('repo')} in local-ai.toml; a private repo needs a token: "
            f"{_LOGIN_HINT}",
        )
    if isinstance(exc, RevisionNotFoundError):
        return NotFoundError(
            f"revision {where.revision!r} does not exist in {where.repo}",
            hint=f"check {where.key('revision')} in local-ai.toml (a branch, tag or commit)",
        )
    if isinstance(exc, EntryNotFoundError) and not is_transient(exc):
        return NotFoundError(
            f"{where.file or 'a file'} is not in {where.repo} at {where.revision}",
            hint="run `local-ai lock --upgrade` if the repo changed since it was locked",
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return OfflineError(
            f"{what} needs the network but offline mode is on (HF_HUB_OFFLINE)",
            hint="unset HF_HUB_OFFLINE, or use only models already in the HuggingFace cache",
        )
    status = status_of(exc)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return AccessDeniedError(
            f"the hub answered {status} for {where.repo}: the token was refused",
            hint=f"{_LOGIN_HINT} with a token that can read {where.repo}",
        )
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    detail = _short(exc)
    if isinstance(exc, httpx.ConnectError) or (
        isinstance(exc.__cause__, httpx.ConnectError) and status is None
    ):
        return UnavailableError(
            f"cannot reach the hub at {hub} ({what}{tries}): {detail}",
            hint="check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only "
            "models already downloaded",
        )
    if is_transient(exc):
        return UnavailableError(
            f"{what} failed{tries}: {detail}",
            hint="the hub or the network is having trouble; run the command again (finished "
            "files are kept)",
        )
    if isinstance(exc, (HfHubHTTPError, httpx.HTTPError)):
        return UnavailableError(f"{what} failed: {detail}")
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
