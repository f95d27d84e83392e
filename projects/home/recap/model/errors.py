"""The error the model raises when it cannot be built for, or run on, what it is given."""

from __future__ import annotations

from tml.core.errors import UserInputError


class ModelInputError(UserInputError):
    """The config, feature widths, a statistics or snapshot file, or a batch does not fit the
    model; the message names the feature, field or file."""
