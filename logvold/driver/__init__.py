"""`logvold driver`: containerd's `binary://` logger and its arguments."""
