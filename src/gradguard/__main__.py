"""``python -m gradguard`` runs the command-line interface."""
import sys

from gradguard.cli import main

sys.exit(main())
