"""One exception type for problems the user can fix (bad input, missing files, bad config).

The CLI prints these as a single line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class CrammerError(Exception):
    """A user-facing error: the message must name the file/line/field at fault."""


class SignalInterrupt(KeyboardInterrupt):
    """A stop signal (SIGTERM) turned into Ctrl-C's unwinding, so clean-up code runs; the CLI exits 128+signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
