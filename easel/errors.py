"""The exceptions Easel raises for problems a user can fix; the CLI prints their message without a traceback."""


class EaselError(Exception):
    """Base of every error whose message tells the user what to fix."""


class InvalidInputError(EaselError, ValueError):
    """A request parameter is out of range or malformed."""


class ModelLoadError(EaselError):
    """A model folder is missing, incomplete or not one Easel supports."""


class StageVerificationError(EaselError):
    """A pipeline stage was given, or left behind, a batch without a field it needs."""
