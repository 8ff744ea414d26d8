"""User-facing errors: each carries one line that the CLI prints instead of a traceback."""


class TextleakError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class GradientFileError(TextleakError):
    """The gradient file is missing, corrupt, of an unknown version, or unsafe to load."""


class ModelMismatchError(TextleakError):
    """The gradient file was produced by another model, config or head initialisation."""


class InputError(TextleakError):
    """Bad text, labels, images or options."""


class MissingKnowledgeError(TextleakError):
    """The attack needs something the attacker was not declared to know or observe."""


class UnsupportedModelError(TextleakError):
    """The model's architecture has no layout (textleak.text.layouts), or lacks what its layout names."""


class Interrupted(TextleakError):
    """A long run was stopped (Ctrl-C); its checkpoint lets `--resume` continue."""

    exit_code = 130
