"""The project's error base: a problem the user can fix, reported by ``ipt`` as one line (exit status 2)."""

from __future__ import annotations


class IPTError(ValueError):
    """Its message is one line naming the file, URL or key and what is wrong with it."""

    def __str__(self) -> str:  # also for subclasses that mix in KeyError (no quotes around the message)
        return str(self.args[0]) if self.args else type(self).__name__
