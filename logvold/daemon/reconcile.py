"""The reconcile pass, the daemon's truth: scan the volumes, survey the streams, submit what is due.

A full pass (every rescanInterval, after a reload or a lost hint) also expires finalised
streams, locks directories that appeared, and recomputes the byte-budget shares; a
partial one rescans only the volumes whose directories a hint named. The survey runs on
a worker thread and costs no step for a stream with nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
import time

from logvold.core.streams import StreamInfo
from logvold.daemon import LOGGER_NAME
from logvold.daemon.hints import HintSteps
from logvold.daemon.steps import StepOutcome, StepRequest
from logvold.daemon.survey import Survey, survey_streams

log = logging.getLogger(LOGGER_NAME)


class ReconcileSteps(HintSteps):
    """Reconcile passes and what a finished step asks of the next one."""

    async def _reconcile(self, *, full: bool) -> None:
        """Scan volumes into the registry, survey the streams, submit what is due."""
        self._reconcile_since = time.monotonic()
        try:
            await self._reconcile_pass(full=full)
        finally:
            self._reconcile_since = None
            self._reconcile_done = time.monotonic()

    async def _reconcile_pass(self, *, full: bool) -> None:
        assert self.workers is not None
        volumes = None if full else set(self._rescan_volumes)
        self._rescan_volumes.clear()
        self._full_rescan = False
        await asyncio.to_thread(self.source.scan, volumes)
        self.workers.set_crowded(self.source.crowded_directories())
        if full:
            self.streams.expire_terminated()
            self.streams.relock()
        self._refresh_watches()
        with_budgets = self._budget_pass or full
        self._budget_pass = False
        infos = self.workers.infos()
        config = self.config
        survey = await asyncio.to_thread(
            survey_streams,
            infos,
            now=self.clock(),
            shares={i.key: self.workers.budget_share(i.key) for i in infos},
            volume_budgets={v.name: v.max_total_size_bytes for v in config.volumes},
            node_budget_bytes=config.node_max_total_size_bytes,
            with_budgets=with_budgets,
        )
        if survey.shares is not None:
            self._apply_budget_shares(infos, survey)
        unstarted = self.streams.take_unstarted()
        for key, check in survey.checks.items():
            # The survey's own stat found a missed size trigger or retention work; a
            # stream with neither costs no step (1,000 idle streams stay cheap).
            first = key in unstarted
            if check.retention or check.size_due or first:
                self.workers.submit(
                    key,
                    StepRequest(check=check.size_due or first, retention=check.retention or first),
                )
        self.activity.flush()
        self.reconciles += 1
        self.metrics.streams.set(len(self.workers))

    def _apply_budget_shares(self, infos: list[StreamInfo], survey: Survey) -> None:
        assert self.workers is not None and survey.shares is not None
        for info in infos:
            share = survey.shares.get(info.key)
            old = self.workers.budget_share(info.key)
            self.workers.set_budget_share(info.key, share)
            usage = survey.usages.get(info.key)
            if (
                share is not None
                and usage is not None
                and share < usage.total_bytes
                and (old is None or share < old)
            ):
                log.info(
                    "disk budget trims stream",
                    extra={
                        "stream": str(info.key),
                        "keep_bytes": share,
                        "used_bytes": usage.total_bytes,
                    },
                )

    def _request_rescan(self, budgets: bool) -> None:
        """A pass soon (debounced); `budgets`: one that recomputes the budget shares."""
        if budgets:
            self._budget_pass = True
        self._rescan.set()

    def _on_outcome(self, info: StreamInfo, outcome: StepOutcome) -> None:
        if outcome.rotated:
            self.activity.rotated(str(info.key), outcome.rotation, outcome.reason)
        if outcome.retention is not None:
            self.activity.truncated(str(info.key), outcome.retention)

    def _on_rotated(self, info: StreamInfo, outcome: StepOutcome) -> None:
        volume_budget = next(
            (v.max_total_size_bytes for v in self.config.volumes if v.name == info.volume), 0
        )
        if volume_budget > 0 or self.config.node_max_total_size_bytes > 0:
            self._request_rescan(True)  # shares move as streams grow: recompute soon
