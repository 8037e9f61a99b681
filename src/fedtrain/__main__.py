"""``python -m fedtrain``."""

from fedtrain.cli import main

raise SystemExit(main())
