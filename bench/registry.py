"""Name -> object registries: ``@SCHEDULES.register("cosine")`` and ``SCHEDULES.get("cosine")``.

Every pluggable kind of thing (schedules, noises, samplers, datasets, metrics, UNet presets) lives
in one registry, so the CLI, the grids and the generated tests find a new entry the moment it is
registered, and nothing anywhere branches on names.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class InputError(ValueError):
    """Bad user input (unknown name, bad parameter, malformed grid): the CLI exits 2 with the message."""


class UnknownNameError(InputError, KeyError):
    """A registry lookup of a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


def did_you_mean(name: object, known, cutoff: float = 0.5) -> str:
    """"did you mean a or b? " for the close matches of ``name`` among ``known`` ("" when none):
    the one hint every unknown-name message shares."""
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=cutoff)
    return f"did you mean {' or '.join(close)}? " if close else ""


class Registry(Generic[T]):
    """A named collection of components of one kind (e.g. ``kind="schedule"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a second registration of a name is an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def find(self, name: str) -> T | None:
        """The component registered as ``name``, or None (e.g. a name a past run used and that is retired)."""
        return self._items.get(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        return f"unknown {self.kind} {name!r}: {did_you_mean(name, self.names())}known: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
