"""The reopen action of a rotated stream: a signal to the process in a pid file, or a
command run as an argument list (never a shell). The rotator's `Reopener`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from logvold.core.policy import ReopenAction
from logvold.errors import ReopenFailed

log = logging.getLogger("logvold.fileio.rotator")  # the rotator's lines, as before the split

COMMAND_TIMEOUT_S = 30
PID_FILE_MAX_BYTES = 4096


def run_reopen_action(action: ReopenAction, stream: str) -> None:
    """Ask the writer of `stream` to reopen its file; ReopenFailed if it could not be asked.

    A command that runs but exits non-zero is logged, not a failure: it was asked.
    """
    try:
        if action.signal and action.pid_file:
            with Path(action.pid_file).open("rb") as f:
                pid = int(f.read(PID_FILE_MAX_BYTES).split()[0])
            name = action.signal.upper()
            os.kill(pid, signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        elif action.command:
            done = subprocess.run(
                list(action.command),
                timeout=COMMAND_TIMEOUT_S,
                check=False,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            if done.returncode:
                log.warning(
                    "stream %s: reopen command %s exited %d: %s",
                    stream,
                    action.command[0],
                    done.returncode,
                    done.stderr[-500:].decode(errors="replace"),
                )
    except (OSError, ValueError, KeyError, IndexError, subprocess.SubprocessError) as e:
        raise ReopenFailed(f"reopen action failed: {e}", op="reopen") from e
