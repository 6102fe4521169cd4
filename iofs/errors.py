"""User-facing failures."""


class IofsError(Exception):
    """A failure the user can act on: the CLI prints it as one line and exits 1."""
