"""Where the lines of the heavy libraries go while a torch stage runs: their chatter (LyCORIS'
INFO lines, transformers' and bitsandbytes' notices about optional packages they fall back
from, model-loading progress bars) to a log file, their other warnings and errors to the
console as well. kohaku's own loggers are left alone.

Writes (appends to) the log file given, e.g. `<run>/logs/train.log`. Used by the trainer
process, the train and evaluate tasks and the demo's model build; the data stages never
call it (it imports transformers' and diffusers' logging modules when they are installed).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# the library loggers whose INFO lines and notices are chatter to a newcomer
LIBRARIES = ("LyCORIS", "transformers", "diffusers", "bitsandbytes", "huggingface_hub",
             "accelerate")  # fmt: skip
# warnings that name a harmless fallback, not a problem: the file only
BENIGN = (
    # transformers uses its Pillow image processors instead (the same preprocessing)
    "requires torchvision (not installed); falling back",
    # bitsandbytes' optional 4-bit CPU kernel; kohaku uses the 8-bit optimizers only
    "from kernels-community",
)
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RealWarnings(logging.Filter):
    """Passes WARNING and above, except the known harmless fallback notices."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(text in message for text in BENIGN)


@contextmanager
def library_logs(log_file: Path) -> Iterator[Path]:
    """While inside: the library loggers write to `log_file` (all their lines) and to
    stderr (real warnings and errors only); their progress bars are off. Restored after."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(FILE_FORMAT))
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(RealWarnings())
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    bars = _progress_bars(enabled=False)
    saved = {name: _route(logging.getLogger(name), [to_file, console]) for name in LIBRARIES}
    try:
        yield log_file
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        _progress_bars(enabled=bars)
        to_file.close()


def _route(logger: logging.Logger, handlers: list[logging.Handler]) -> tuple[list, bool]:
    """Replaces the logger's own handlers (LyCORIS prints to stdout in colour, transformers
    to stderr); returns what it had, to restore."""
    saved = (logger.handlers[:], logger.propagate)
    logger.handlers, logger.propagate = list(handlers), False
    return saved


def _progress_bars(enabled: bool) -> bool:
    """Turns the hub libraries' own progress bars ("Loading weights") on or off; returns
    whether they were on. Importing their logging modules first also makes transformers
    and diffusers add their default stderr handler now, so that `_route` replaces it
    instead of it being added later beside ours."""
    was = True
    for name in ("transformers", "diffusers"):
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(f"{name}.utils.logging")
        module.get_logger(name)  # configures the library's root logger (its handler)
        was = was and module.is_progress_bar_enabled()
        (module.enable_progress_bar if enabled else module.disable_progress_bar)()
    return was
