"""User-facing errors.

A :class:`MrbenchError` is bad input the user can fix (a missing file, a wrong
option, a corrupt checkpoint). The CLI prints its message as one line and exits
with code 2, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class MrbenchError(Exception):
    """Bad input: the message names the file or option and what is wrong."""
