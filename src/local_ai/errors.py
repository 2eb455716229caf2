"""Typed errors. Each carries the data of what went wrong and a hint naming the fix.

The CLI turns them into one message (see ``local_ai.cli.errors``); tracebacks only with
``LOCAL_AI_DEBUG=1``. Exit codes are documented in docs/troubleshooting.md.
"""

from __future__ import annotations

from pathlib import Path


class ExitCode:
    OK = 0
    ERROR = 1  # an operation failed
    CHANGES = 2  # plan --detailed-exitcode: changes pending
    USAGE = 64  # bad command line (Click/Typer uses 2 itself; we map it)
    CONFIG = 78  # the manifest, lock or another config file is invalid (EX_CONFIG)
    UNAVAILABLE = 69  # a service/network/resource is unavailable (EX_UNAVAILABLE)
    INTERRUPTED = 130


class LocalAIError(Exception):
    """Base of every error the CLI reports without a traceback."""

    exit_code: int = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(LocalAIError):
    """A configuration file is invalid. Points at the file, the line and the key."""

    exit_code = ExitCode.CONFIG

    def __init__(
        self,
        message: str,
        *,
        path: Path | None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.line = line
        self.column = column
        self.key = key

    @property
    def location(self) -> str:
        where = str(self.path) if self.path else "<manifest>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return where

    def __str__(self) -> str:
        head = f"{self.location}: "
        if self.key:
            head += f"{self.key}: "
        return head + self.message


class ManifestError(ConfigError):
    """One or more problems in local-ai.toml; ``problems`` holds each as its own ConfigError."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(
            first.message,
            path=first.path,
            line=first.line,
            column=first.column,
            key=first.key,
            hint=first.hint,
        )
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class UsageError(LocalAIError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = ExitCode.USAGE


class NotFoundError(LocalAIError):
    """A file, model, alias or repository that was named does not exist."""


class NotYetError(LocalAIError):
    """A feature the manifest allows but this version cannot do yet."""


class UnavailableError(LocalAIError):
    """Network, hub, server or another resource cannot be reached."""

    exit_code = ExitCode.UNAVAILABLE


class OfflineError(UnavailableError):
    """The operation needs the network but offline mode is on."""


class LockHeldError(LocalAIError):
    """Another local-ai process holds the apply lock."""


class DiskSpaceError(LocalAIError):
    """Not enough free space for a download or a conversion."""

    @classmethod
    def no_space(cls, directory: Path, doing: str, *, hint: str | None = None) -> DiskSpaceError:
        """The disk filled up while writing (ENOSPC): names the directory and what was written."""
        return cls(
            f"no space left on the disk holding {directory} while {doing}",
            hint=hint
            or "free up space on that disk and run the command again; nothing "
            "half-written was kept",
        )


def is_disk_full(exc: BaseException) -> bool:
    """An OSError saying the disk (or the user's quota) is full."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: BaseException, doing: str) -> DiskSpaceError:
    """A DiskSpaceError for an ENOSPC that no narrower handler caught, naming its file."""
    filename = getattr(exc, "filename", None)
    where = Path(filename).parent if isinstance(filename, str | Path) else Path("the disk")
    return DiskSpaceError.no_space(where, doing)


class IntegrityError(LocalAIError):
    """A file's hash or size does not match what was resolved."""


class UnsafeInputError(LocalAIError):
    """Input from an untrusted source (hub, GGUF, request) was refused."""


class AccessDeniedError(LocalAIError):
    """The hub refused access: a gated or private repo, or a token it does not accept."""


class PortInUseError(UnavailableError):
    """The server's TCP port is taken by another process."""

    def __init__(
        self, host: str, port: int, holder: str | None, *, hint: str | None = None
    ) -> None:
        where = f"{host}:{port}"
        by = f" by {holder}" if holder else ""
        super().__init__(f"port {port} is already in use{by} ({where})", hint=hint)
        self.host = host
        self.port = port
        self.holder = holder


class ServerError(LocalAIError):
    """The local server failed to start, stop or answer; ``log_tail`` holds its last log lines."""

    def __init__(self, message: str, *, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint=hint)
        self.log_tail = log_tail

    def __str__(self) -> str:
        if not self.log_tail:
            return self.message
        return f"{self.message}\n--- last lines of the log ---\n{self.log_tail.rstrip()}"


class MalformedFileError(UnsafeInputError):
    """A model file (GGUF, safetensors) is malformed; names the file, the field and the offset."""

    def __init__(
        self,
        path: Path,
        field: str,
        problem: str,
        *,
        offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(
            f"{path}: {field}: {problem}{at}",
            hint=hint or "the file is damaged or not a model file; download it again",
        )
        self.path = path
        self.field = field
        self.problem = problem
        self.offset = offset


class ConversionError(LocalAIError):
    """A model conversion failed (the converter process died, ran out of its memory limit, or the
    model cannot be mapped to MLX)."""


class ClientFileChangedError(LocalAIError):
    """A client config file (Zed, Claude Code, Goose, Codex) changed after it was planned."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} changed after local-ai planned its edit; nothing was written to it",
            hint="run the command again so the plan starts from the file as it is now",
        )
        self.path = path
