"""User-facing errors.

Every problem a user can cause (a bad file, number, index, model name, or an unreachable network) is raised
as a :class:`LabError`. The CLI prints its message as one line and exits non-zero; the dashboard shows it in
the page. Anything else is a bug and keeps its traceback.
"""


class LabError(Exception):
    """A clear, specific problem with the user's input or environment."""


class HubUnreachableError(LabError):
    """The model hub (or another remote service) could not be reached."""


class FieldError(LabError):
    """A bad value of one named setting.

    ``field`` is the setting's name in code (``budget``); the message names it in words ("budget B must be …"), so a
    page shows it beside its field as it is, and the command line prefixes the option (``--budget: …``).
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")
