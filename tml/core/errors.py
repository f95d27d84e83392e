"""The one error type entry points report as a single line instead of a traceback."""


class UserInputError(ValueError):
    """A mistake in a config, a data file or a command line: the message says what and where."""

    # True for errors that every rank raises together (after agreeing on them over a
    # collective), where one rank's copy of the message is enough.
    same_on_every_rank: bool = False
