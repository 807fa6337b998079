"""logvold: a pod log volume manager that rotates container logs without
splitting, losing or duplicating events, and serves them over HTTP."""

__version__ = "0.1.0"
