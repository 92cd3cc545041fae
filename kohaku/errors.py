"""Stage-level errors: raised before work starts, with a message that says what to fix;
and the one line a command shows for an error the user fixes (`user_message`)."""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(ValueError):
    """A config or input that cannot work; the message names the field or file to fix."""


class InputError(ConfigError):
    """An input file or table is missing, unreadable or lacks a column."""


def is_config_error(exc: BaseException | None) -> bool:
    """A config or input error (or a pydantic model refusing a value): the same input fails
    the same way, so it is reported at once and never retried."""
    return isinstance(exc, ConfigError | ValidationError)


def explain(exc: ValidationError) -> str:
    """The problems of a ValidationError on one line: `sample.ranges.1.count: ...; ...`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def user_message(exc: BaseException) -> str | None:
    """The one line a command shows for an error the user fixes: a config or input error,
    a ValidationError (its fields), a named file missing or in the way, or an error raised
    from one of these (a failed stage's); None for anything else, a crash, whose
    traceback is worth keeping."""
    if isinstance(exc, ValidationError):
        return f"invalid {exc.title}: {explain(exc)}"
    if isinstance(exc, FileNotFoundError | FileExistsError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    cause = exc.__cause__
    if isinstance(exc, ConfigError | FileExistsError | FileNotFoundError) or (
        cause is not None and user_message(cause) is not None
    ):
        return _one_line(exc)
    return None


def _one_line(exc: BaseException) -> str:
    """The message on one line; a ValidationError quoted in it shrunk to its fields."""
    text, cause = str(exc), exc.__cause__
    if isinstance(cause, ValidationError):
        text = text.replace(str(cause), explain(cause))
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
