"""The one exception type for bad user input.

The command line turns it into a one-line message and exit status 2; library callers
can catch it as a ValueError.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the value and what is accepted."""
