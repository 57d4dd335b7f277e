"""``python -m phraseground ...`` runs the command line (also ``torchrun -m phraseground``)."""
import sys

from .app.cli import main

sys.exit(main())
