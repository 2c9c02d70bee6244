"""Named registries that fill themselves: heads, towers, datasets, samplers, losses, decode backends, re-rankers.

A registry knows the package its components live in and imports every module of that package on the first
lookup (and again when a name is not found), so adding a component is adding a file with a ``register``
decorator: no list of imports is kept anywhere. One registry per component kind keeps lookup errors uniform:
an unknown name always fails with the list of valid choices, which is what a user mistyping a config value
needs to see.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


def import_package_modules(package_name: str) -> None:
    """Import every module below ``package_name`` (subpackages included); modules already imported are not
    run again. Folders on the package's ``__path__`` count, so a plugin folder appended to it is found too."""
    package = importlib.import_module(package_name)
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        importlib.import_module(module.name)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str | None = None) -> None:
        """``package``: where the components of this kind live (``tvr.models.heads``); None for a registry
        filled by hand."""
        self.kind = kind
        self.package = package
        self._entries: dict[str, Callable[..., T]] = {}
        self._discovering = False

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = factory
            return factory

        return decorator

    def discover(self) -> None:
        """Import the package's modules, which register their components as they are imported."""
        if self.package is None or self._discovering:  # a module that looks a name up while it is imported
            return
        self._discovering = True
        try:
            import_package_modules(self.package)
        finally:
            self._discovering = False

    def _lookup(self, name: str) -> Callable[..., T] | None:
        if name not in self._entries:
            self.discover()  # not imported yet, or a module added since the last look
        return self._entries.get(name)

    def get(self, name: str) -> Callable[..., T]:
        factory = self._lookup(name)
        if factory is None:
            raise UnknownComponentError(f"unknown {self.kind} '{name}'; valid choices: {', '.join(self.names())}")
        return factory

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self.discover()  # cheap once the modules are imported, and it finds a module added since
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None
