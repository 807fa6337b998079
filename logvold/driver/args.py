"""`logvold driver` arguments: containerd's `binary://` query pairs (argv `key value ...`)
and the container's identity (env) -> where and how the container's log is written.

Names follow nerdctl's json-file driver where one exists (`max-size`, `max-file`,
`log-path`); the rest are logvold's policy keys in the same kebab-case.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from logvold.core.log_policy import LogPolicy
from logvold.core.units import parse_size
from logvold.core.values import choice as _choice
from logvold.core.values import decode_delimiter as _delimiter
from logvold.core.values import parse_positive_size as _positive_size
from logvold.core.values import parse_rotate as _rotate

DEFAULT_ROOT = "/var/log/logvold"
DEFAULT_PATH_TEMPLATE = "{root}/{namespace}/{id}/{id}.log"
MAX_LINE_BYTES = 16 * 1024
"""Longer lines become P pieces (cri) or entries without a newline (json-file), like
containerd's CRI `max_container_log_line_size` default and docker's 16 KiB copier buffer."""

KEYS = {
    "root": "directory the default path is built under (default /var/log/logvold)",
    "path": "path template with {root}, {namespace}, {id} "
    "(default {root}/{namespace}/{id}/{id}.log)",
    "log-path": "nerdctl's name for `path`",
    "format": "cri (default), json-file or raw",
    "max-size": "rotate when the active file reaches this size (10Mi; 0 = never by size)",
    "max-file": "files kept per container, the active one included (5, like the kubelet; >= 2)",
    "rotate": "also rotate each Hourly or Daily period, or every fixed period such as 15m (Never)",
    "compress": "rotated files: none, gzip, zstd; true = gzip, false = none (docker's json-file)",
    "delimiter": "end of an event for format raw, with escapes (\\n)",
    "max-event-size": "longer lines are cut into pieces (16Ki like containerd and docker; "
    "raw: 1Mi)",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_COMPRESS = {"none": "none", "false": "none", "gzip": "gzip", "true": "gzip", "zstd": "zstd"}


@dataclass(frozen=True, kw_only=True)
class DriverOptions:
    """One container's log: its identity, the active file path and the writer policy."""

    namespace: str
    container_id: str
    path: str
    policy: LogPolicy


def parse_driver_args(argv: Sequence[str], env: Mapping[str, str]) -> DriverOptions:
    """Check the pairs and the environment; raise ValueError naming every problem."""
    problems: list[str] = []
    if len(argv) % 2:
        problems.append(f"arguments come in `key value` pairs, got {len(argv)} words")
    pairs: dict[str, str] = {}
    for key, value in zip(argv[::2], argv[1::2], strict=False):
        if key not in KEYS:
            problems.append(f"unknown key {key!r}: use {', '.join(KEYS)}")
        elif key in pairs or (key in ("path", "log-path") and {"path", "log-path"} & set(pairs)):
            problems.append(f"key {key!r} given twice")
        else:
            pairs[key] = value
    container_id = env.get("CONTAINER_ID", "")
    namespace = env.get("CONTAINER_NAMESPACE", "")
    for var, value in (("CONTAINER_ID", container_id), ("CONTAINER_NAMESPACE", namespace)):
        if not _SAFE_NAME.match(value) or value in (".", ".."):
            problems.append(
                f"env {var}={value!r}: expected a containerd name (letters, digits, _ . -); "
                "containerd's shim sets it"
            )
    policy: LogPolicy | None = None
    try:
        policy = _policy(pairs)
    except ValueError as exc:
        problems.append(str(exc))
    path = ""
    template = pairs.get("path", pairs.get("log-path", DEFAULT_PATH_TEMPLATE))
    root = pairs.get("root", DEFAULT_ROOT)
    try:
        path = template.format(root=root, namespace=namespace, id=container_id)
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"path {template!r}: only {{root}}, {{namespace}}, {{id}} exist ({exc})")
    if path and not path.startswith("/"):
        problems.append(f"path {path!r} must be absolute (the shim's working directory varies)")
    if problems or policy is None:
        raise ValueError("; ".join(problems))
    return DriverOptions(namespace=namespace, container_id=container_id, path=path, policy=policy)


def _policy(pairs: Mapping[str, str]) -> LogPolicy:
    problems: list[str] = []

    def check(key: str, default: str, convert: Callable[[str], object]) -> object:
        raw = pairs.get(key, default)
        try:
            return convert(raw)
        except ValueError as exc:
            problems.append(f"{key} {raw!r}: {exc}")
            return None

    fmt = check("format", "cri", _choice(("cri", "json-file", "raw")))
    max_size = check("max-size", "10Mi", parse_size)
    max_file = check("max-file", "5", _max_file)
    rotate = check("rotate", "Never", _rotate)
    compress = check("compress", "none", _compression)
    delimiter = check("delimiter", "\\n", _delimiter)
    max_event = check("max-event-size", "1Mi", _positive_size)
    if fmt not in (None, "raw") and delimiter not in (None, b"\n"):
        problems.append(f"format {fmt} frames lines: delimiter must be \\n")
    if problems:
        raise ValueError("; ".join(problems))
    assert isinstance(max_size, int) and isinstance(max_file, int)
    assert isinstance(delimiter, bytes) and isinstance(max_event, int)
    assert isinstance(fmt, str) and isinstance(rotate, str) and isinstance(compress, str)
    return LogPolicy(
        format=fmt,  # type: ignore[arg-type]
        max_size_bytes=max_size,
        max_files=max_file - 1,
        rotate=rotate,
        compress=compress,  # type: ignore[arg-type]
        delay_compress=False,  # we are the writer: a closed segment is never written again
        delimiter=delimiter,
        max_event_size_bytes=max_event,
    )


def _max_file(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if count < 2:
        raise ValueError("keep at least 2 files (the active one and one rotated)")
    return count


def _compression(value: str) -> str:
    if value.lower() not in _COMPRESS:
        raise ValueError(f"use one of {', '.join(_COMPRESS)}")
    return _COMPRESS[value.lower()]
