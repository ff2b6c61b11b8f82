"""The user-facing error family: the command line prints these as one line, exit status 2."""


class S4kitError(Exception):
    """Base of every error caused by input (config, files, data), not by a bug."""


def first_line(exc: BaseException, sentence: bool = False) -> str:
    """An exception's message cut to one line for a one-line error (its type name if it has
    no message); with ``sentence`` also to its first sentence (torch's long load errors)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line.split(". ")[0].rstrip(".") if sentence else line
