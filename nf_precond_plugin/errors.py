"""Errors caused by the user's input: the CLIs print them as one line, without a traceback."""


class UserInputError(Exception):
    """Bad input: a path, a file's content or an option. The message names it and what was expected."""
