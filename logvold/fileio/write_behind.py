"""Write-behind for the line formats: one thread writes encoded chunks while the caller
reads and escapes the next, so the write syscall (which releases the GIL) overlaps the
C escaping instead of adding to it.

Rules that keep the files byte-identical to writing in place:
- one thread, one FIFO: jobs run in the order they were submitted; every write names
  its fd, and a rotated segment's close (or its hand-over to the maintenance thread)
  is a job after that segment's writes - no byte goes to a closed or reused fd;
- the caller does the size accounting at submit time, so rotation decisions do not
  depend on the thread;
- bounded: the caller waits (`wait_for`) before reusing a buffer the thread may still
  be writing, and before each write() for what the write() before last queued
  (RotatingWriter._write_lines / _lines_whole): at most two chunks in flight;
- a failed write is kept and raised by the caller's next write, flush or close
  (`take_error`); the thread drops the rest of that job and carries on with the next.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WriteFailure:
    """A write the thread could not finish."""

    fd: int
    error: OSError
    lost: int
    """Bytes of that job not written (the caller counted them at submit time)."""


_Job = tuple[int, memoryview] | Callable[[], None] | None


class WriteBehind:
    """One writer thread over a FIFO of (fd, bytes) writes and callables."""

    def __init__(self, name: str = "logvold-write-behind") -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._cond = threading.Condition(threading.Lock())
        self.submitted = 0
        """Jobs submitted so far (the caller's thread only)."""
        self._done = 0
        self._waiting = False
        self._failure: WriteFailure | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        """Queue `data` for `fd`; the caller must not change it until `wait_for` says done."""
        self._jobs.put((fd, memoryview(data)))
        self.submitted += 1

    def call(self, job: Callable[[], None]) -> None:
        """Run `job` on the thread after every write queued so far (e.g. close an fd)."""
        self._jobs.put(job)
        self.submitted += 1

    def wait_for(self, mark: int) -> None:
        """Block until the first `mark` jobs are done."""
        if self._done >= mark:
            return
        with self._cond:
            self._waiting = True
            while self._done < mark:
                self._cond.wait()
            self._waiting = False

    def drain(self) -> None:
        """Block until every job submitted so far is done."""
        self.wait_for(self.submitted)

    def take_error(self) -> WriteFailure | None:
        """The first write failure since the last call, or None (clears it)."""
        failure = self._failure
        if failure is not None:
            with self._cond:
                failure, self._failure = self._failure, None
        return failure

    def stop(self) -> None:
        """Finish every queued job, then end the thread."""
        self._jobs.put(None)
        self.submitted += 1
        self._thread.join()

    def _run(self) -> None:
        jobs = self._jobs
        cond = self._cond
        while True:
            job = jobs.get()
            if job is None:
                self._finish()
                return
            if isinstance(job, tuple):
                fd, view = job
                del job
                try:
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as exc:
                    with cond:
                        if self._failure is None:
                            self._failure = WriteFailure(fd=fd, error=exc, lost=len(view))
                view.release()  # the caller's buffer may be reused (and resized) now
                del view
            else:
                try:
                    job()
                except Exception as exc:  # a close that fails: report it like a write
                    with cond:
                        if self._failure is None and isinstance(exc, OSError):
                            self._failure = WriteFailure(fd=-1, error=exc, lost=0)
                del job
            self._finish()

    def _finish(self) -> None:
        with self._cond:
            self._done += 1
            if self._waiting:
                self._cond.notify_all()
