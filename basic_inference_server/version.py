"""Framework version, reported in every response as ``ver``."""

__version__ = "3.0.0"
