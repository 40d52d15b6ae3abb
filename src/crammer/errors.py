"""One exception type for problems the user can fix (bad input, missing files, bad config).

The CLI prints these as a single line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class CrammerError(Exception):
    """A user-facing error: the message must name the file/line/field at fault."""
