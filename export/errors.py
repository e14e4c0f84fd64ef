"""The one exception family of the export stage: every message is a single line naming the cause."""


class ExportError(ValueError):
    """Base of every error the export stage reports to the user."""
