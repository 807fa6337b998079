"""The kubelet's node log query (KEP-2258): the handler, journalctl and plain log files."""
