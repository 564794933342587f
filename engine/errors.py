"""User-facing errors.

Every problem a user can cause (a bad file, number, index, model name, or an unreachable network) is raised
as a :class:`LabError`. The CLI prints its message as one line and exits non-zero; the dashboard shows it in
the page. Anything else is a bug and keeps its traceback.
"""


class LabError(Exception):
    """A clear, specific problem with the user's input or environment."""


class HubUnreachableError(LabError):
    """The model hub (or another remote service) could not be reached."""
