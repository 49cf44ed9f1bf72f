"""The one exception type that the command line prints as a single clear line."""


class MinibertError(Exception):
    """A problem with the user's input (a file, an option, a word): the message says which and what to do."""
