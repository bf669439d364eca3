"""gradwatch: watch ML training from the outside."""

__version__ = "0.1.0"
