"""The error a user can act on: `UsageError`, a wrong argument, setting or input file.

Its message names the file, key or value and what is wrong, so `unet` prints it as one line
(exit status 2). Any other exception is a bug and keeps its traceback. Standard library only:
the light modules (`unet.settings`, `unet.pipeline`) raise it too.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A wrong argument, setting or input; a ValueError, so library callers may catch either."""
