"""A plain name → class registry whose lookup error lists the valid names.

One small type for every plug-in family (docs/design.md §2): adding a plug-in is one file and
one ``REGISTRY["name"] = Class`` line; a wrong name gets the one-line error every registry gives.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import MrbenchError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``dict`` of name → plug-in; :meth:`lookup` raises the user-facing error."""

    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        super().__init__(entries or {})
        self.kind = kind

    def lookup(self, name: str, option: str | None = None) -> T:
        """The plug-in called ``name``; ``option`` (e.g. ``--format``) prefixes the error."""
        try:
            return self[name]
        except KeyError:
            where = f"{option}: " if option else ""
            raise MrbenchError(f"{where}unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}") from None
