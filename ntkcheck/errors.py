"""Errors that the CLI turns into one line and exit code 2."""


class UserError(ValueError):
    """Bad input from the user: the message names the bad value."""
