"""A helper thread that encodes the later pieces of a big json-file chunk while the
writer's own thread encodes the first and writes them all in order.

json-file output is CPU-bound: the C escaper (`core._json_lines`, ~0.45 ms per MiB of
typical lines) and the writes of ~1.45x the input (~0.4 ms per MiB), both without
the GIL. On two threads the escaping of the later pieces overlaps the writes of the
earlier ones. The pieces split at line ends, so each is encoded exactly as a chunk
of its own lines would be: the same bytes, in order. Memory: one chunk's output.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Encode = Callable[[str, int, "bytes | memoryview"], tuple[bytes, "bytes | bytearray"]]
"""`ChunkEncoder.encode` of an encoder the helper owns (its frame cache is not shared)."""

PIECE_BYTES = 512 * 1024
"""Pieces of a chunk: the writer's thread encodes the first and writes each in turn
while the helper encodes the others; chunks below 1.5 pieces are not split. Two
pieces per 1 MiB read: each hand-over costs two thread wake-ups (~10-20 us on a VM),
and 256 KiB pieces measured slower than 512 KiB."""


def split_points(data: bytes, start: int, stop: int, piece: int = PIECE_BYTES) -> list[int]:
    """Line starts cutting data[start:stop] (whole lines) into pieces of about `piece`
    bytes: [start, ..., stop]; just [start, stop] when it is smaller than two pieces."""
    points = [start]
    at = start + piece
    while stop - at >= piece // 2:
        nl = data.find(b"\n", at, stop - 1)
        if nl < 0:
            break
        points.append(nl + 1)
        at = nl + 1 + piece
    points.append(stop)
    return points


class SplitEncoder:
    """One daemon thread running `encode` for `submit()`ted pieces; `result()` waits
    for the oldest. An exception raised by the encoder is raised again by result()
    on the caller's thread (for that piece)."""

    def __init__(self, encode: Encode) -> None:
        self._encode = encode
        self._jobs: queue.SimpleQueue[tuple[str, int, bytes | memoryview] | None] = (
            queue.SimpleQueue()
        )
        self._done: queue.SimpleQueue[tuple[bytes, bytes | bytearray] | BaseException] = (
            queue.SimpleQueue()
        )
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="logvold-encode", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Pieces submitted whose result() is not taken yet."""
        return self._pending

    def submit(self, stream: str, ts: int, data: bytes | memoryview) -> None:
        """Queue `data` (whole lines; not to be changed until its result())."""
        self._pending += 1
        self._jobs.put((stream, ts, data))

    def result(self) -> tuple[bytes, bytes | bytearray]:
        """(head, body) of the oldest piece not taken yet, as `encode` returned them."""
        if not self._pending:
            raise RuntimeError("SplitEncoder: nothing submitted")
        got = self._done.get()
        self._pending -= 1
        if isinstance(got, BaseException):
            raise got
        return got

    def stop(self) -> None:
        """End the thread (after the pieces in flight, if any)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._done.put(self._encode(*job))
            except BaseException as exc:  # handed to the caller's thread
                self._done.put(exc)
