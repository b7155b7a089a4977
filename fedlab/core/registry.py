"""Registries: named components, built-in or the user's, found the same way.

Each kind of component (data set, model, algorithm, partitioner, aggregator)
has one :class:`Registry`, owned by the module that defines the kind. fedlab's
own components are registered through exactly the decorators a user calls
(``fl.register_algorithm("name")`` and friends), so nothing built in takes a
private path. Modelled on timm's ``register_model``.

A name registered again replaces the earlier entry when both come from outside
fedlab (re-running a notebook cell that registers must work); replacing a
built-in needs ``replace=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from .validation import ConfigError

T = TypeVar("T")
FEDLAB_PACKAGE = __name__.split(".")[0]  # "fedlab": every module below it is fedlab's own


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, the object, and what ``python -m fedlab list`` shows."""

    name: str
    component: T
    summary: str = ""
    paper: Optional[str] = None
    builtin: bool = False
    at_import: bool = False  # fedlab's, registered as fedlab was imported: every fresh process has it


class UnknownComponent(ConfigError):
    """A name no component of the kind is registered under (in this process)."""


class Registry(Generic[T]):
    """Components of one kind by name."""

    def __init__(self, kind: str, field: str):
        self.kind = kind  # "algorithm"
        self.field = field  # the config field naming one: "algorithm"
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, component: T, *, summary: str = "", paper: Optional[str] = None,
            source: Any = None, replace: bool = False) -> Entry[T]:
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{self.kind} name: must be letters, digits, '_' or '-', got {name!r}")
        builtin = _is_builtin(source if source is not None else component)
        old = self._entries.get(name)
        if old is not None and old.builtin and not replace:
            raise ValueError(f"{self.kind} {name!r} is built into fedlab; pick another name "
                             "(or pass replace=True to shadow it)")
        entry = Entry(name, component, summary or _first_line(source if source is not None else component),
                      paper, builtin, builtin and not _fedlab_imported)
        self._entries[name] = entry
        return entry

    def restore(self, entry: Entry[T]) -> None:
        """Puts ``entry``, registered in another process and sent here, under its name as it was there (a sweep's
        worker process receives the components a notebook registered)."""
        self._entries[entry.name] = entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.entry(name).component

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownComponent(self.field, f"must be one of {', '.join(self.names())}; got {name!r}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


_fedlab_imported = False


def fedlab_imported() -> None:
    """Called once ``import fedlab`` has registered fedlab's components: entries added later are not
    ``at_import`` (a worker process that imports fedlab does not have them)."""
    global _fedlab_imported
    _fedlab_imported = True


def _is_builtin(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "")
    return module == FEDLAB_PACKAGE or module.startswith(FEDLAB_PACKAGE + ".")


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def source_digest(obj: Any) -> str:
    """A hash of a user component's source code: part of the result-cache key.

    fedlab's own code is covered by the hash of the package; a user's builder
    edited in a notebook must not be served a result its old version made. An
    object whose source cannot be read hashes its qualified name and ``repr``;
    one made from data (a device table) carries its own ``fedlab_digest``.
    """
    if getattr(obj, "fedlab_digest", None):
        return str(obj.fedlab_digest)
    if _is_builtin(obj):
        return ""
    try:
        text = inspect.getsource(obj)
    except (OSError, TypeError):
        text = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}:{obj!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def decorator(registry: Registry, name: str, make: Callable[[Any], Any], **entry_options):
    """The shape of every ``register_*``: a decorator adding ``make(obj)`` under ``name``, returning ``obj``."""

    def register(obj):
        registry.add(name, make(obj), source=obj, **entry_options)
        return obj

    return register
