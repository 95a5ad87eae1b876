"""The one exception type for user mistakes (bad paths, files, configs)."""

from __future__ import annotations


class DHRError(Exception):
    """A problem the user can fix; the message names the file or config key and the fix."""
