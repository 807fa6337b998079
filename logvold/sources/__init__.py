"""Where streams and their changes come from: the config's static volumes, Kubernetes pods on this
node, inotify hints and per-stream change notices."""
