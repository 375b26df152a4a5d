"""The base of the errors this package raises about the daemon (shared by
query.py and curve.py; re-exported by both and by the package)."""


class XplainError(Exception):
    """Base of the errors this package raises about the daemon."""
