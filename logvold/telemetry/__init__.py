"""logvold's own signals: Prometheus metrics and structured log lines."""
