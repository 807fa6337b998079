"""The systemd notify protocol (sd_notify(3)), stdlib only: tell systemd that
logvold is ready, reloading or stopping, and ping its watchdog.

Outside systemd ($NOTIFY_SOCKET unset) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends datagrams to `$NOTIFY_SOCKET`; one per process.

    The environment is read once at construction (`environ` for tests), the
    socket is opened lazily and kept; a send failure is logged once and never
    raised: a lost notification must not stop the daemon.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval_s = _watchdog_interval_s(env)
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) listens on `$NOTIFY_SOCKET`."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines as one datagram; True if it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %r: %s", self._address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1: startup finished (Type=notify units count as started now)."""
        return self.send("READY=1", *((f"STATUS={status}",) if status else ()))

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as systemd 253+ wants for Type=notify-reload;
        send ready() when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown started."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by `systemctl status`."""
        return self.send(f"STATUS={text.splitlines()[0] if text else ''}")

    def ping(self) -> bool:
        """WATCHDOG=1: the main loop is alive."""
        return self.send("WATCHDOG=1")

    def watchdog_interval_s(self) -> float | None:
        """Seconds between ping() calls (half of $WATCHDOG_USEC), or None when the
        watchdog is off or meant for another process ($WATCHDOG_PID)."""
        return self._watchdog_interval_s

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | bytes | None:
    """The sendto() address of $NOTIFY_SOCKET: a path, or `@name` in the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: neither an absolute path nor @abstract", value)
    return None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2 / 1e6
