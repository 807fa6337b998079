"""Command-line clients of a running logvold: `logvold logs` and `logvold query`."""
