"""``python -m selfsup.report``."""

from selfsup.report.cli import main

raise SystemExit(main())
