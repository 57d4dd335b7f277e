"""Backward-compatible alias of :mod:`phraseground.app.cli` (``python -m phraseground.cli``, and
console scripts installed before the app moved). The library never imports this module."""
from __future__ import annotations

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
