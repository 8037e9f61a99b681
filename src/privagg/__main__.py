"""``python -m privagg``: the privagg command line (see :mod:`privagg.cli`)."""

from privagg.cli import main

raise SystemExit(main())
