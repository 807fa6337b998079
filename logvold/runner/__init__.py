"""`logvold run`: a drop-in for kube-log-runner that rotates at event boundaries.

goflags parses Go-style flags, process runs the child and pumps its output,
cli ties them together; the writing itself is fileio.rotating_writer's job.
"""
