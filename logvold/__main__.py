"""`python -m logvold` is the `logvold` command."""

from logvold.cli import main

raise SystemExit(main())
