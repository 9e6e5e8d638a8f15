"""``python -m mert_fast.cli``: the ``mert-fast`` command."""

from mert_fast.cli import main

raise SystemExit(main())
