"""``python -m gradguard`` runs the command-line interface."""
import sys

from gradguard._cli.main import main

sys.exit(main())
