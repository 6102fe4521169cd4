"""iofs: a passthrough FUSE filesystem that makes I/O paths visible and comparable."""

__version__ = "0.1.0"
