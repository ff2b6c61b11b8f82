"""The user-facing error family: the command line prints these as one line, exit status 2."""


class S4kitError(Exception):
    """Base of every error caused by input (config, files, data), not by a bug."""
