"""The one exception type the command-line tools turn into a one-line error and a non-zero exit."""


class NscfateError(Exception):
    """A user-facing error: the message names the file, key or value and what was expected."""
