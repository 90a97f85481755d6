"""One policy for errors a user can cause: one line on stderr and exit status 2; bugs keep their traceback.

Every user-facing error class of the package (a missing or malformed file, a bad option, a checkpoint of another
network, ...) derives from :class:`DespikeUserError` and keeps its own name, built-in base (``ValueError``,
``RuntimeError``, ``KeyError``, ``FileNotFoundError``) and message, so existing ``except`` clauses still work. The
command-line tools run their body through :func:`run_cli`, which reports those (and the operating system's ``OSError``:
missing file, permission denied, disk full) as ``PROG: error: message``. Anything else escapes with its traceback: it
is a bug to fix, not a message to read.

This module imports nothing but the standard library, so the physics modules may use it.
"""
import sys
import warnings
from typing import Callable, Tuple, Type

#: Exit status of a command stopped by a user error (argparse uses 2 for bad arguments too).
USER_ERROR_STATUS = 2


class DespikeUserError(Exception):
    """Base of the errors a user can cause and fix; the message names the input and what was expected."""


class DespikeUserWarning(UserWarning):
    """Something a user should know about an input that can still be used (a recording cut off mid-frame, ...).

    Under :func:`run_cli` it is one line, ``PROG: warning: message``; elsewhere an ordinary Python warning.
    """


def user_error_message(error: BaseException) -> str:
    """The message of ``error`` as one line of text (a ``KeyError`` without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return ' '.join(text.split('\n'))


def run_cli(prog: str, body: Callable[[], int], also: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run a command's ``body``; a user error prints ``PROG: error: message`` and returns :data:`USER_ERROR_STATUS`.

    Args:
        prog: The command's name, first on the error line.
        body: The command's work; returns its exit status.
        also: Further exception types this command treats as user errors, for commands whose flags go straight into
            library functions that validate with plain ``ValueError`` (the physics commands).

    A :class:`DespikeUserWarning` raised meanwhile prints as ``PROG: warning: message`` and the work goes on.

    Returns:
        ``body()``'s status, or 2 after a user error.
    """
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DespikeUserWarning):
            print(f'{prog}: warning: {user_error_message(message)}', file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('always', DespikeUserWarning)  # each is raised once where once is meant
            shown = warnings.showwarning
            warnings.showwarning = show
            return body()
    except (DespikeUserError, OSError, *also) as error:
        print(f'{prog}: error: {user_error_message(error)}', file=sys.stderr)
        return USER_ERROR_STATUS
