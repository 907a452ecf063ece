"""Name -> entry registries (verl style): the config names an entry, the code looks it up here.

Each registry is defined in the module of its entries (advantage estimators in ``algorithms/advantages.py``, policy
losses in ``algorithms/losses.py``, rewards in ``rewards/registry.py`` with one module per reward) and filled as those
modules are imported. This module imports nothing of the project, so no registry can form an import cycle.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name. ``kind`` names what is registered, for error messages ("unknown reward 'x'; ...")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` above a function or class adds it under ``name``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")

        def add(entry: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry registered as ``name``; ``KeyError`` listing the registered names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
