"""The one exception type the command-line tools turn into a one-line error and a non-zero exit."""


class NscfateError(Exception):
    """A user-facing error: the message names the file, key or value and what was expected.

    A secret in a URI the message quotes is masked (``postgresql://user:***@db``).
    """

    def __init__(self, message: str) -> None:
        from nscfate.redact import redact

        super().__init__(redact(str(message)))


def user_error_in(err: BaseException) -> NscfateError | None:
    """The NscfateError anywhere in ``err``'s cause chain (libraries such as Hydra wrap them)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, NscfateError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
