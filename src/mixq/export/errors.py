"""The error every backend raises when a model cannot be written as its file format."""


class ExportError(RuntimeError):
    """The model could not be written in the requested format; nothing was left at the target path."""
