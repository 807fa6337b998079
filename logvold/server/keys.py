"""The keys of the aiohttp application and request state, in a module of their own.

Handlers (logs.py, kubeapi.py, status.py, kubelet_paths.py) read what app.py stores
under these keys; with the keys here, app.py imports the handler modules and none of
them imports app.py back (no import cycle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from logvold.changes import StreamChanges
from logvold.core.policy import Config
from logvold.core.streams import StreamRegistry
from logvold.metrics import Metrics

CONFIG_KEY = web.AppKey("logvold.config", Config)
REGISTRY_KEY = web.AppKey("logvold.registry", StreamRegistry)
METRICS_KEY = web.AppKey("logvold.metrics", Metrics)
ReadyCheck = Callable[[], bool]
READY_KEY: web.AppKey[ReadyCheck] = web.AppKey("logvold.is_ready")
LiveCheck = Callable[[], "str | None"]
"""None while the daemon makes progress, else why not (served by /livez as a 503)."""
LIVE_KEY: web.AppKey[LiveCheck] = web.AppKey("logvold.liveness")
EXECUTOR_KEY = web.AppKey("logvold.executor", ThreadPoolExecutor)
SHUTDOWN_KEY = web.AppKey("logvold.shutdown", threading.Event)
CHANGES_KEY = web.AppKey("logvold.changes", StreamChanges)
"""Set when the daemon feeds change notices (inotify + rotator commits): followers then
sleep until their stream changes instead of polling it."""
HANDLER_KEY = web.RequestKey("logvold.handler", str)
"""Set by a handler that serves another job under a shared route (the node log query)."""
