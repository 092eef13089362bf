"""The project's errors: what the user can act on, told apart from bugs.

Raised where the input is checked, with a message that names the file, the field or the key,
and what was expected and found. `omni-jax` prints a `UserError` as one line (`--debug`: with
its traceback) and exits 1; any other exception is a bug in omni_jax, printed with its traceback
and a line asking to report it. Each class also derives from the built-in type a Python caller
would catch (ValueError, FileNotFoundError, ...), so library users keep their `except` clauses.

    UserError
    ├── InputError          a file, manifest line, config field or argument that cannot be used
    │   ├── MissingInputError   ... because it does not exist
    │   └── OutputExistsError   an output that would overwrite something
    ├── CheckpointRefused   a checkpoint or workdir this run cannot start from or resume
    ├── RunStopped          a run that cannot go on (too many skipped examples, non-finite steps, ...)
    └── EndpointError       an HTTP endpoint (the judge, ...) that cannot be used

`Stopped` is no error: a long job that SIGTERM or Ctrl-C stopped between items, its work kept.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and where."""


class InputError(UserError, ValueError):
    """Input that cannot be used: a file, a manifest line, a config field, an argument."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(InputError, FileExistsError):
    """An output path that exists already (nothing is overwritten)."""


class CheckpointRefused(UserError, ValueError):
    """A checkpoint or workdir that this run cannot start from or resume."""


class RunStopped(UserError, RuntimeError):
    """A run cannot go on, for a reason the user can act on (the message says which)."""


class EndpointError(UserError, ConnectionError):
    """An endpoint (OpenAI-compatible server) that cannot be reached or keeps refusing requests."""


class Stopped(Exception):
    """A long job stopped between items by SIGTERM or Ctrl-C; what it finished is kept and the
    same command resumes. `omni-jax` exits 0 (SIGTERM) or 130 (`interrupted`: Ctrl-C)."""

    def __init__(self, message: str, interrupted: bool = False):
        super().__init__(message)
        self.interrupted = interrupted
