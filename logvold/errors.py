"""The one exception tree of logvold; messages say what to do next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


class LogvoldError(Exception):
    """Base of every error logvold raises on purpose.

    `path` and `op` say which file and which operation failed, so a log line or
    a CLI message can name them without parsing the text.
    """

    def __init__(self, message: str, *, path: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.op = op


class UsageError(LogvoldError):
    """Bad command-line usage: the CLI prints it with usage and exits 2."""


class FlagError(UsageError):
    """A `logvold run` / kube-log-runner command line Go's flag package would reject; the
    message is Go's wording (`flag provided but not defined: -x`) and the usage follows."""


class HelpRequested(LogvoldError):
    """`-h` / `-help` / `--help` was given and no flag of that name is defined: not a
    failure (Go's flag.ErrHelp); the CLI prints the usage and exits 0."""

    def __init__(self, message: str = "flag: help requested") -> None:
        super().__init__(message)


class StartError(LogvoldError):
    """The command given to `logvold run` could not be started (not found on PATH, not
    executable); `exit_code` is what a shell would return (127 or 126)."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message, op="start")
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in a configuration file, located precisely enough to fix it."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(LogvoldError):
    """A configuration (file, annotation or flags) that cannot be used.

    Carries every problem found, not just the first, so one run of
    `logvold check-config` shows the operator all there is to fix.
    """

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__(
            "\n".join(str(p) for p in self.problems),
            path=problems[0].file if problems else None,
            op="load config",
        )


class StateError(LogvoldError):
    """A stream state file that cannot be read or written."""


class StreamError(LogvoldError):
    """A log stream that cannot be read, rotated or written."""


RefusalKind = Literal[
    "symlink", "not-regular", "not-directory", "hardlink", "outside", "too-big", "too-many"
]


class UnsafeFile(StreamError):
    """A name inside a volume that logvold refuses to touch: a symlink, a FIFO or other
    non-regular file, a hard-linked file, a path leaving the volume, an oversized file.

    `kind` is the metric label (`logvold_unsafe_files_refused_total{kind}`).
    """

    def __init__(
        self, message: str, *, kind: RefusalKind, path: str | None = None, op: str | None = None
    ) -> None:
        super().__init__(message, path=path, op=op)
        self.kind: RefusalKind = kind


class CompressionInterrupted(StreamError):
    """The daemon is stopping: the compression was abandoned, its temp file removed and
    the plain segment kept (the next start compresses it)."""


class DirectoryLocked(LogvoldError):
    """Another process (another logvold) manages this directory."""


class BadRequest(LogvoldError):
    """A client request that cannot be served as asked; the message is the 4xx reason.

    The HTTP middleware maps this family, and only it, to a 400: any other exception
    escaping a handler (a ValueError included) is a bug, answered 500 and logged.
    """


class SelectorError(BadRequest):
    """A label or field selector that does not parse; the message is the 400 reason."""


class BadListParam(BadRequest):
    """A stream listing's `limit` or `continue` that cannot be used; the message is the 400
    reason and says what to send instead."""


class NodeLogQueryError(BadRequest):
    """A node log query the server refuses: `status` is 400 (unparsable) or 406 (invalid)."""

    def __init__(self, status: int, problems: Sequence[str]) -> None:
        self.status = status
        self.problems = tuple(problems)
        # The kubelet aggregates field errors as "[a, b]" and shows a single one bare.
        joined = ", ".join(self.problems)
        self.reason = self.problems[0] if len(self.problems) == 1 else f"[{joined}]"
        super().__init__(self.reason, op="node log query")


class FileQueryError(LogvoldError):
    """A log file that cannot be served; `missing` tells "not there" from other refusals."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class DeadlineExceeded(LogvoldError):
    """The query's deadline passed while reading a file."""

    def __init__(self, message: str = "the node log query's deadline passed") -> None:
        super().__init__(message)


class ReviewUnavailable(LogvoldError):
    """The API server could not be asked; the request gets a 503."""


class ApiStatusError(LogvoldError):
    """A non-2xx answer of the Kubernetes API server, with its Status object if it sent
    one; the message carries the server's own reason (e.g. which RBAC rule is missing)."""

    def __init__(self, status: int, message: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"API server answered {status}: {message}", op="kubernetes api")
        self.status = status
        self.body = dict(body or {})


class ClientError(LogvoldError):
    """A failure of `logvold logs` / `logvold query` to report on one line (exit 1)."""


class ReopenFailed(StreamError):
    """The writer of a renamed file could not be asked to reopen it (pid file, signal or
    command); it keeps writing the renamed segment until it reopens by itself."""
