"""How the rotator asks a foreign writer to reopen its file after a rename, without the
file-I/O layer running processes or sending signals itself.

The rotator holds a `Reopener` (injected by the daemon: runner.reopen.run_reopen_action);
the file layer only decides WHEN to reopen, the adapter knows HOW.
"""

from __future__ import annotations

from typing import Protocol

from logvold.core.policy import ReopenAction


class Reopener(Protocol):
    """Carry out a stream's reopen action (signal a pid file's process, or run an argv).

    Raises errors.ReopenFailed (or OSError) when the writer could not be asked; the
    rotator then counts a `reopen` rotation failure and goes on.
    """

    def __call__(self, action: ReopenAction, stream: str) -> None: ...
