"""The two kinds of failure every command reports without a traceback.

`UserError`: what the user gave (a flag, a path, a name, a config value) does not work;
the message says what was expected and the fix, and every CLI exits 2. Anything else
that escapes is a bug in the project and keeps its traceback.
`NonFiniteLossError`: training diverged; every CLI exits 3.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message names the fix (exit code 2)."""


class NonFiniteLossError(RuntimeError):
    """Training loss became NaN or inf; the last good checkpoint is kept (exit code 3)."""
