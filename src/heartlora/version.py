"""The package version (one place: the package face, records and adapter files read it here)."""
__version__ = "0.1.0"
