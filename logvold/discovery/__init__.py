"""Where streams come from besides the static config: Kubernetes pods on this node."""
