"""One exception type for everything a user can fix.

The CLI turns it into a single line on stderr and exit code 2, so a user mistake
never surfaces as a traceback from deep inside torch or transformers.
"""

from __future__ import annotations


class TokengraftError(Exception):
    """A user mistake or an unsupported setup; the message says what to change."""
