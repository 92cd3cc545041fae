"""Stage-level errors: raised before work starts, with a message that says what to fix."""


class ConfigError(ValueError):
    """A config or input that cannot work; the message names the field or file to fix."""


class InputError(ConfigError):
    """An input file or table is missing, unreadable or lacks a column."""
