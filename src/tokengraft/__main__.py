"""`python -m tokengraft` (used by `accelerate launch -m tokengraft ...`)."""

import sys

from .cli import main

sys.exit(main())
