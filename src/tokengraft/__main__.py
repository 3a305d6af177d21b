"""`python -m tokengraft` (used by `accelerate launch -m tokengraft ...`)."""

import sys

from tokengraft.cli.main import main

sys.exit(main())
