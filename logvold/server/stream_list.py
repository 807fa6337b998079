"""`GET /logs/` without a node log query: the page of streams a client may read, with
their policy summary and sizes. One bounded listing per directory, not one per stream
(256 streams of a 100,000-file volume cost one pass), and a page size with a
`continue` token, so the answer stays small and fast whatever a node holds.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logvold.core.layout import segments_of
from logvold.core.streams import StreamInfo, StreamKey
from logvold.errors import BadListParam
from logvold.fileio.reader_dir import Refused, StreamDir, log_refusal
from logvold.fileio.safedir import MAX_NAMES, SafeDir, stream_root

_SEGMENT_HEAD = re.compile(r"^(.+)\.\d{8}-\d{6}")
"""`<base>.<YYYYMMDD-HHMMSS>`: greedy, so the last stamp-looking part is the stamp."""
DEFAULT_PAGE = 500
"""Streams per page unless `limit` says otherwise: a node's worth in one answer."""
MAX_PAGE = 5000
"""Largest `limit`: the answer stays a few MB."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the listing: `next_after` is the key to continue after (None: last)."""

    items: list[dict[str, Any]]
    next_after: StreamKey | None
    total: int
    """Streams the client may see on all pages."""


def parse_page(limit: str | None, token: str | None) -> tuple[int, StreamKey | None]:
    """(page size, key to start after) from the query; BadListParam with a reason."""
    size = DEFAULT_PAGE
    if limit is not None:
        if not (limit.isascii() and limit.isdigit() and len(limit) <= 6) or not (
            1 <= int(limit) <= MAX_PAGE
        ):
            raise BadListParam(f"limit must be a whole number from 1 to {MAX_PAGE}")
        size = int(limit)
    after = None
    if token is not None:
        parts = token.split("/")
        if len(token) > 1024 or len(parts) != 3 or not all(parts):
            raise BadListParam(
                "continue must be the token of a previous page (namespace/pod/container)"
            )
        after = StreamKey(*parts)
    return size, after


def page_of(
    infos: Iterable[StreamInfo],
    *,
    visible: Callable[[StreamInfo], bool],
    size: int,
    after: StreamKey | None,
    refused: Refused = log_refusal,
) -> Page:
    """The `size` streams after `after` (in key order) that `visible` lets the client see."""
    shown = sorted((i for i in infos if visible(i)), key=lambda i: i.key)
    start = 0
    if after is not None:
        start = next((n for n, i in enumerate(shown) if i.key > after), len(shown))
    chosen = shown[start : start + size]
    more = start + size < len(shown)
    return Page(
        describe_many(chosen, refused), chosen[-1].key if more and chosen else None, len(shown)
    )


def describe_many(
    infos: Sequence[StreamInfo], refused: Refused = log_refusal
) -> list[dict[str, Any]]:
    """`describe` of every stream, in the given order, listing each directory once."""
    by_dir: dict[tuple[Path, Path], list[int]] = {}
    for n, info in enumerate(infos):
        by_dir.setdefault((info.directory, stream_root(info)), []).append(n)
    out: list[dict[str, Any] | None] = [None] * len(infos)
    for members in by_dir.values():
        files = StreamDir(infos[members[0]], refused)
        try:
            bases = {infos[n].base for n in members}
            names: dict[str, list[str]] = {b: [] for b in bases}
            sd = files.directory()
            for name in _bounded_names(sd):
                base = _base_of(name, bases)
                if base is not None:
                    names[base].append(name)
            for n in members:
                out[n] = _describe(infos[n], sd, sorted(names[infos[n].base]))
        finally:
            files.close()
    return [row for row in out if row is not None]


def describe(info: StreamInfo, refused: Refused = log_refusal) -> dict[str, Any]:
    """One stream of the listing: names, policy summary, annotations and sizes. Sizes
    come from lstat through the pinned stream directory: only regular files count, and a
    directory reached through a symlink lists nothing."""
    return describe_many([info], refused)[0]


def _bounded_names(sd: SafeDir | None) -> Iterator[str]:
    """At most MAX_NAMES names of `sd`, quietly: a directory holding more (a pod's flood)
    shows the segments among them. The daemon already logged and counted it once; a
    listing request must not log it again each time."""
    if sd is None:
        return
    try:
        yield from itertools.islice(sd.iter_names(), MAX_NAMES)
    except OSError:
        return


def _base_of(name: str, bases: set[str]) -> str | None:
    """The base among `bases` that `name` may be a segment of (`<base>.<stamp>...`; any
    active file name, not only `*.log`); `segments_of` then parses it exactly."""
    if name in bases:
        return None
    m = _SEGMENT_HEAD.match(name)
    return m.group(1) if m and m.group(1) in bases else None


MAX_LISTED_SEGMENT_FILES = 1000
"""Segment paths listed per stream (the newest); counts and bytes still cover them all."""


def _describe(info: StreamInfo, sd: SafeDir | None, names: list[str]) -> dict[str, Any]:
    """Sizes and where the files are on disk (paths as logvold sees them: the host's,
    where volumes are mounted at their host paths as in the DaemonSet and systemd unit)."""
    p = info.policy
    segments = segments_of(info.base, names)
    segment_bytes = active_size = active_alloc = 0
    listed: list[dict[str, Any]] = []
    for index, seg in enumerate(segments):
        st = _regular(sd, seg.filename)
        if st is None:
            continue
        segment_bytes += st.st_size
        if index >= len(segments) - MAX_LISTED_SEGMENT_FILES:
            listed.append({"path": str(info.directory / seg.filename), "bytes": st.st_size})
    if (st := _regular(sd, info.base)) is not None:
        active_size, active_alloc = st.st_size, st.st_blocks * 512
    return {
        "namespace": info.key.namespace,
        "pod": info.key.pod,
        "container": info.key.container,
        "volume": info.volume,
        "source": info.source,
        "podUID": info.pod_uid,
        "file": info.base,
        "policy": {
            "format": p.format,
            "rotate": p.rotate,
            "maxSize": p.max_size_bytes,
            "maxFiles": p.max_files,
            "maxAgeSeconds": p.max_age_s,
            "maxTotalSize": p.max_total_size_bytes,
            "compress": p.compress,
            "strategy": p.strategy,
        },
        "annotations": dict(info.annotations),
        "activeFile": {
            "path": str(info.active_path),
            "apparentBytes": active_size,
            "allocatedBytes": active_alloc,
        },
        "segments": {
            "count": len(segments),
            "bytes": segment_bytes,
            "compressed": sum(1 for s in segments if s.compression),
            "newestClosed": segments[-1].stamp.isoformat() if segments else None,
            "files": listed,
        },
    }


def _regular(sd: SafeDir | None, name: str) -> os.stat_result | None:
    """lstat of a regular file `name` in `sd`; None for anything else or missing."""
    try:
        st = sd.lstat(name) if sd is not None else None
    except OSError:
        return None
    return st if st is not None and stat.S_ISREG(st.st_mode) else None
