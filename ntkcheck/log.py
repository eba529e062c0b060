"""ntkcheck's own one-line messages and progress bars.

Messages go to stderr as ``ntkcheck: <message>`` through the "ntkcheck" logger
(one line each, no source lines, no Python warning machinery). Progress bars
are tqdm bars on stderr, off when NTKCHECK_PROGRESS=0 or tqdm's own
TQDM_DISABLE is set to a true value; turning them off also turns off the bars
of transformers and huggingface_hub, so one switch silences every bar.
"""
from __future__ import annotations

import logging
import os
import sys

_TRUE = ("1", "true", "yes", "on")

class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so redirections and test captures see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with _bars_cleared():
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
        except (OSError, ValueError):  # pragma: no cover - stderr closed
            pass


def _bars_cleared():
    """tqdm's external_write_mode on stderr: the progress bars drawn there are cleared while a message is
    written and drawn again below it, so a note given during a bar (a kernel block's copied entries) stands
    on its own line instead of inside the bar's."""
    import contextlib

    tqdm = sys.modules.get("tqdm.auto") or sys.modules.get("tqdm")   # no bar can be drawn before tqdm is imported
    if tqdm is None:
        return contextlib.nullcontext()
    return tqdm.tqdm.external_write_mode(file=sys.stderr)


logger = logging.getLogger("ntkcheck")
if not logger.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("ntkcheck: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def note(message: str) -> None:
    """One line ``ntkcheck: message`` on stderr (a fact the user should know; not an error)."""
    logger.warning(" ".join(str(message).split()))


def progress_enabled() -> bool:
    """False when NTKCHECK_PROGRESS=0 or TQDM_DISABLE is true."""
    if os.environ.get("NTKCHECK_PROGRESS", "1").strip() == "0":
        return False
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in _TRUE


def progress_bar(**kwargs):
    """A tqdm bar on stderr that honours ``progress_enabled()`` (kwargs as for tqdm)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("leave", False)
    kwargs["disable"] = kwargs.get("disable", False) or not progress_enabled()
    return tqdm(**kwargs)


def quiet_libraries() -> None:
    """With progress off, turn off transformers' and huggingface_hub's bars too (before they are imported)."""
    if progress_enabled():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:
        try:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover - very old transformers
            pass
