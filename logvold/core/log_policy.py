"""A stream's policy: how one log file is rotated, retained, compressed and framed.

Its own module so that the writers (`logvold run`, `logvold driver`) load this one value
and not the daemon's whole configuration model (`core.policy`, which re-exports these
names: import them from either).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

Rotate = str
"""`Hourly`, `Daily`, `Never`, or a fixed period as whole seconds (`"600s"`)."""
ROTATE_NAMES: Final = ("Hourly", "Daily", "Never")


def period_seconds(rotate: Rotate) -> int | None:
    """The length of a fixed rotation period (`"600s"` -> 600); None for the named ones."""
    if rotate.endswith("s") and rotate[:-1].isdigit():
        return int(rotate[:-1])
    return None


Compress = Literal["none", "gzip", "zstd"]
Format = Literal["raw", "cri", "json-file"]
Strategy = Literal["punch", "rename", "copytruncate"]
Collapse = Literal["auto", "always", "never"]


@dataclass(frozen=True, kw_only=True)
class ReopenAction:
    """How to make a foreign writer reopen its log file after a `rename` rotation.

    YAML: `reopen: {signal: HUP, pidFile: /run/app.pid}` or `reopen: {command: [argv...]}`;
    exactly one of the two forms.
    """

    signal: str | None = None
    """Signal name without `SIG` (`HUP`, `USR1`) sent to the pid in `pid_file`."""
    pid_file: str | None = None
    """File holding the writer's pid; required with `signal`."""
    command: tuple[str, ...] = ()
    """argv run (no shell) after the rename, like kubelet's ReopenContainerLog."""


@dataclass(frozen=True, kw_only=True)
class LogPolicy:
    """How one container stream is rotated, retained, compressed and framed.

    YAML keys are the camelCase of the field names without unit suffixes:
    subDir, rotate, maxSize, maxFiles, maxAge, maxTotalSize, compress,
    delayCompress, format, delimiter, maxEventSize, strategy, collapse,
    reopen, timezone, annotations.
    """

    sub_dir: str = ""
    """Directory of the active files, relative to the volume path; "" = the volume root."""
    rotate: Rotate = "Never"
    """Time trigger: cut at each period start (in `timezone`): Hourly, Daily, or a fixed
    period written as a duration (`10m`, kept as whole seconds `"600s"`, boundaries at its
    multiples: `15m` cuts at :00, :15, :30, :45); Never = size only."""
    max_size_bytes: int = 10 * 2**20
    """Size trigger in bytes; 0 = none. 10 MiB, like kubelet's containerLogMaxSize."""
    max_files: int = 5
    """Closed segments kept; 0 = unlimited. 5, like kubelet's containerLogMaxFiles."""
    max_age_s: float = 0.0
    """Seconds a closed segment is kept after it was closed; 0 = unlimited."""
    max_total_size_bytes: int = 0
    """Bytes of segments plus the live part of the active file; 0 = unlimited."""
    compress: Compress = "none"
    """Compression of closed segments. none by default: readers then need no decoder."""
    delay_compress: bool = True
    """Keep the newest closed segment plain, so a lagging reader can finish it cheaply."""
    format: Format = "raw"
    """How events are framed: raw (delimiter), cri (P/F lines) or json-file (docker)."""
    delimiter: bytes = b"\n"
    """Event end for the raw format; YAML string with escapes (`"\\n\\n"`, `"\\x1e"`)."""
    max_event_size_bytes: int = 2**20
    """Events longer than this are cut (and counted) so memory stays bounded; 1 MiB."""
    strategy: Strategy = "punch"
    """Rotation of a foreign writer's file: punch (lossless), rename, copytruncate (lossy)."""
    collapse: Collapse = "never"
    """Shrink punched files with COLLAPSE_RANGE: auto = only when every writer uses O_APPEND.
    never by default: other readers that follow the file by offset (tail -F, Fluent Bit,
    Vector) take a shrinking file for a truncation and read it again (duplicates)."""
    reopen: ReopenAction | None = None
    """What tells the writer to reopen after a `rename` rotation; None = nothing."""
    timezone: str = "UTC"
    """IANA zone in which Hourly/Daily periods start; segment names stay in UTC."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Free-form context served with the stream (the proposal's aggregator context)."""
