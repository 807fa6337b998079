"""File I/O layer: writers, rotator, state file, stream readers (sync stdlib)."""
