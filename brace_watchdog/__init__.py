"""brace-watchdog: keeps the brace stack alive and gates what only a human may approve."""

__all__ = ["__version__"]

__version__ = "0.1.0"
