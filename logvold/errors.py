"""The one exception tree of logvold; messages say what to do next."""

from __future__ import annotations

from dataclasses import dataclass


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
