"""Refusals of one stream's unsafe files: counted every time, logged once per episode.

A pod that plants a symlink keeps it there; the rotator meets it at every step. The
metric `logvold_unsafe_files_refused_total{kind}` counts each refusal, the log says it
once when it starts and once when it ends (an operation ran without meeting it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from logvold.fileio.safedir import UnsafeFile

if TYPE_CHECKING:
    from logvold.core.streams import StreamKey
    from logvold.telemetry.metrics import Metrics

log = logging.getLogger("logvold.fileio.rotator")


@dataclass
class Episode:
    """What one operation refused: `refused` when an UnsafeFile ended it."""

    op: str
    refused: bool = False
    seen: set[tuple[str, str, str]] = field(default_factory=set)


class Refusals:
    """The refusals of one stream, across its operations (one caller at a time)."""

    def __init__(self, key: StreamKey, metrics: Metrics | None, where: str) -> None:
        self._key = key
        self._metrics = metrics
        self._where = where
        self._current: Episode | None = None
        self._refusing: set[tuple[str, str, str]] = set()
        """(operation, kind, path) refused in the current episode: logged once."""

    @contextlib.contextmanager
    def episode(self, op: str) -> Iterator[Episode]:
        """One operation: an UnsafeFile ends it (refused, counted, nothing more done);
        a refusal of an earlier `op` not met this time is over (logged as such)."""
        ep = Episode(op)
        self._current = ep
        try:
            yield ep
        except UnsafeFile as e:
            ep.refused = True
            self.refuse(e, op)
        finally:
            self._current = None
            gone = {k for k in self._refusing if k[0] == op} - ep.seen
            if gone:
                self._refusing -= gone
                log.info(
                    "stream %s: %s no longer refused: %s",
                    self._key,
                    op,
                    ", ".join(sorted(k[2] for k in gone)),
                )

    def refuse(self, e: UnsafeFile, what: str | None = None) -> None:
        """Count `e`; log it unless this operation already met it in this episode.
        `what` names the sub-step for the log (`active`, `trim`, ...)."""
        ep = self._current
        what = what or (ep.op if ep is not None else "step")
        # Keyed by the operation that runs (its end closes the episode), not the sub-step.
        key = (ep.op if ep is not None else what, e.kind, e.path or self._where)
        if ep is not None:
            ep.seen.add(key)
        if self._metrics is not None:
            self._metrics.unsafe_refused.labels(e.kind).inc()
        if key not in self._refusing:
            self._refusing.add(key)
            log.warning("stream %s: %s refused: %s", self._key, what, e)
