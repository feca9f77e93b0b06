"""User mistakes, as opposed to bugs: the one exception family the CLI turns into one line.

    from cellseg.errors import UserError
    raise UserError("unknown cell type 'astr'", where="--cell-type",
                    fix="use one of shsy5y, astro, cort")

``cellseg.cli.main`` is the single error boundary: a ``UserError`` (or a stdlib ``OSError`` such as
``FileNotFoundError`` carrying a file name) raised anywhere below a command ends as

    cellseg <cmd>: <what>, <where>, <fix>

on stderr with exit code 2 and no traceback (``--debug`` or ``CELLSEG_DEBUG=1`` shows it). Any other
exception is a bug and keeps its traceback. Raise ``UserError`` at the place that knows the fix;
library callers may still catch the subclasses as ``ValueError`` (they inherit from it).

This module imports nothing, so any layer (core, data, models, inference, training) may use it.
"""

from __future__ import annotations


class UserError(Exception):
    """A user mistake: the message is one line: what, where, fix.

    ``UserError("what, where, fix")`` or ``UserError("what", where="...", fix="...")``; the parts
    are joined with ", " so every message reads the same way.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(", ".join(p for p in (what, where, fix) if p))


class ConfigError(UserError, ValueError):
    """A config file, config name or ``--set`` override is wrong (unknown key, bad value).

    ``key``: the dotted path of the one key to blame (``optim.lrr``), when there is one.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None,
                 key: str | None = None):
        super().__init__(what, where=where, fix=fix)
        self.key = key


class InputError(UserError, ValueError):
    """A file or folder the user gave cannot be used: empty, unreadable, corrupt or the wrong
    layout (a truncated PNG, a checkpoint that is not one, a bad RLE, a CSV without header)."""
