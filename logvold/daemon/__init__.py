"""The composition layer of `logvold serve`: the daemon, its step workers, survey, scheduler and
systemd notify."""

LOGGER_NAME = "logvold.daemon.serve"
"""Every module of the daemon logs under this one name: the `logger` field of its lines
stays what operators filter on, whichever module the line comes from."""
