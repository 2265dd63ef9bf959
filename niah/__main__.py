"""`python -m niah` runs the CLI."""

import sys

from niah.cli import main

sys.exit(main())
