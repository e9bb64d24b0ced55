"""The exceptions Easel raises for problems a user can fix; the CLI prints their message without a traceback."""

from collections.abc import Callable
from typing import Any


class EaselError(Exception):
    """Base of every error whose message tells the user what to fix."""


class InvalidInputError(EaselError, ValueError):
    """A request parameter is out of range or malformed."""


class ModelLoadError(EaselError):
    """A model folder is missing, incomplete or not one Easel supports."""


class StageVerificationError(EaselError):
    """A pipeline stage was given, or left behind, a batch without a field it needs."""


def attempt(work: Callable[[], Any]) -> Any:
    """What `work` returns, or the exception it raised: for work on several requests, where one's failure is its
    own answer and not the others'."""
    try:
        return work()
    except Exception as error:
        return error
