"""The HTTP API (aiohttp, the only importer of it): container logs, node log query,
kube-compatible endpoints for kubectl, metrics and health."""
