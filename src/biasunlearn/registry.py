"""A tiny name -> object registry, used for benchmarks, methods and baselines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from biasunlearn.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered under unique names; lookups of unknown names name the flag at fault."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind = kind
        self.flag = flag
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"{self.flag}: unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def parse_list(self, value: str) -> list[str]:
        """Split a comma-separated list of names and check each one."""
        names = [v.strip() for v in value.split(",") if v.strip()]
        if not names:
            raise ConfigError(f"{self.flag}: give at least one of {', '.join(self.names())}")
        for n in names:
            self.get(n)
        return names

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
