"""User-facing errors: each carries one line that the CLI prints instead of a traceback."""


class TextleakError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2

    def __str__(self) -> str:  # one line, whatever the message was built from
        text = " ".join(str(a) for a in self.args) if self.args else type(self).__name__
        return " ".join(text.split()) or type(self).__name__


class GradientFileError(TextleakError):
    """The gradient file is missing, corrupt, of an unknown version, or unsafe to load."""


class ModelMismatchError(TextleakError):
    """The gradient file was produced by another model, config or head initialisation."""


class InputError(TextleakError):
    """Bad text, labels, images or options."""


class OutputError(TextleakError):
    """An output path that would overwrite an input or an unrelated file, or cannot be written."""


class MissingKnowledgeError(TextleakError):
    """The attack needs something the attacker was not declared to know or observe."""


class UnsupportedModelError(TextleakError):
    """The model's architecture has no layout (textleak.text.layouts), or lacks what its layout names."""


class Interrupted(TextleakError):
    """A long run was stopped (Ctrl-C or SIGTERM); its checkpoint lets `--resume` continue."""

    exit_code = 130

    def __init__(self, message: str, *, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
