"""One exception type for every user-facing failure: the CLI prints its message on one line."""


class DomainptError(Exception):
    """A problem the user can fix (bad recipe, missing file, ...). The message names the culprit."""
