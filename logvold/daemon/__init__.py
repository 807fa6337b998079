"""The composition layer of `logvold serve`: the daemon, its step workers, survey, scheduler and
systemd notify."""
