"""The one logger name of the daemon's modules (a leaf: every part imports it).

Its lines keep the `logger` field `logvold.daemon.serve` that operators filter on,
whichever module (lifecycle, streams, reconcile, ...) a line comes from.
"""

LOGGER_NAME = "logvold.daemon.serve"
"""Every module of the daemon logs under this one name."""
