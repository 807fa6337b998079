"""The config file as the daemon watches it: its digest, its directory, debounced change checks.

A change is judged by content (sha256 of the file), not by events: an editor's
several writes, a ConfigMap's `..data` swap and a touch without a change all end in
one comparison. The digest of the content last loaded or rejected is remembered, so a
bad file is not retried every rescan. No config file (`--logs-dir` or the built-in
volume): nothing is watched and nothing ever changes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

CONFIG_DEBOUNCE_S = 0.3
"""A config file written in several steps is read once, after the last one."""


class ConfigFileWatch:
    """Whether the config file changed since the content last loaded (or rejected).

    `on_change` is called (on the loop) when a debounced check finds new content."""

    def __init__(self, config_path: str | None, on_change: Callable[[], None]) -> None:
        self._path = None if config_path is None else Path(config_path).absolute()
        self._on_change = on_change
        self._digest: bytes | None = None
        self._watch_paths: frozenset[str] = frozenset()
        self._check_pending = False

    def directory(self) -> Path | None:
        """The directory to watch for the file's events (None: no config file)."""
        return None if self._path is None else self._path.parent

    def is_config(self, path: str) -> bool:
        """Is `path` the config file (known once it was read)?"""
        return path in self._watch_paths

    def read(self) -> bytes | None:
        """The digest of the file's content now: None without a config file, b"" when
        it cannot be read."""
        if self._path is None:
            return None
        self._watch_paths = frozenset({str(self._path)})
        try:
            return hashlib.sha256(self._path.read_bytes()).digest()
        except OSError:
            return b""

    def remember(self, digest: bytes | None) -> None:
        """`digest` is the content in effect (loaded, or rejected and not to retry)."""
        self._digest = digest

    def changed(self) -> bool:
        """The file holds content other than the remembered one (the periodic safety net
        for a missed file event); False without a config file or before start."""
        return self._digest is not None and self.read() not in (None, self._digest)

    def schedule_check(self, loop: asyncio.AbstractEventLoop) -> None:
        """A file event hit the config file: compare its content once, a moment later
        (an editor writing in place shows a half-written file for a moment)."""
        if not self._check_pending:
            self._check_pending = True
            loop.call_later(CONFIG_DEBOUNCE_S, self._check)

    def _check(self) -> None:
        self._check_pending = False
        if self.read() != self._digest:
            self._on_change()
