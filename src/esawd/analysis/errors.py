"""The one exception of the forgetting analysis (kept apart so every part can raise it)."""


class AnalysisError(ValueError):
    """A setting or run directory the analysis refuses, with the fix in the message."""
