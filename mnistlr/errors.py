"""The one exception type for mistakes a user can fix (bad input, bad params)."""


class MnistlrError(Exception):
    """A user-facing error: its message is one line naming the bad value and what is accepted."""
