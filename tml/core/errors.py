"""The one error type entry points report as a single line instead of a traceback."""


class UserInputError(ValueError):
    """A mistake in a config, a data file or a command line: the message says what and where."""
