"""The one exception type for errors a user can cause (bad flags, unknown games, corrupt files).

Library code raises :class:`UserError` with a message that says what to do; only ``run.py`` turns
it into one line on stderr and exit code 2. Any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input or files, reported as one line and exit code 2."""

    quiet = False
    """True on the ranks other than 0 of a distributed run: rank 0 says it, the others just exit 2."""
