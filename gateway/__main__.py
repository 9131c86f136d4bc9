"""``python -m gateway``: the same as the ``schoolgate`` command."""

from .cli import main

raise SystemExit(main())
