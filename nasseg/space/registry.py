"""The space registry: register by name, create by name, list all.

Built-in spaces register themselves when :mod:`nasseg.spaces` is imported. A user's own space is
found as ``package.module:ClassName`` or through the ``nasseg.spaces`` entry-point group.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping, TypeVar

from nasseg.space.base import SearchSpace
from nasseg.space.knobs import KnobError, fixed_knobs

__all__ = ["register_space", "get_space_class", "create_space", "list_spaces", "space_name",
           "UnknownSpaceError"]

_REGISTRY: dict[str, type[SearchSpace]] = {}
_FROM_ENTRY_POINTS: set[str] = set()
S = TypeVar("S", bound=type[SearchSpace])


class UnknownSpaceError(LookupError):
    """No space is registered under the given name."""


def register_space(name: str) -> Callable[[S], S]:
    """Class decorator: make a :class:`SearchSpace` subclass known as ``name``."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, SearchSpace)):
            raise TypeError(f"@register_space({name!r}) needs a SearchSpace subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"space name {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = cls
        cls.space_name = name
        return cls

    return decorate


def _load_builtin_and_plugins() -> None:
    importlib.import_module("nasseg.spaces")
    for ep in entry_points(group="nasseg.spaces"):
        if ep.name not in _REGISTRY:
            register_space(ep.name)(ep.load())
            _FROM_ENTRY_POINTS.add(ep.name)


def list_spaces() -> list[str]:
    """Names of all registered spaces, built-in and from entry points."""
    _load_builtin_and_plugins()
    return sorted(_REGISTRY)


def get_space_class(name: str) -> type[SearchSpace]:
    """The class registered as ``name``, or imported from ``module:ClassName``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownSpaceError(f"cannot import space {name!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, SearchSpace)):
            raise UnknownSpaceError(f"{name!r} is not a nasseg SearchSpace subclass")
        return cls
    _load_builtin_and_plugins()
    if name not in _REGISTRY:
        raise UnknownSpaceError(f"unknown space {name!r}; known spaces: {', '.join(sorted(_REGISTRY))}"
                                " (or give module:ClassName)")
    return _REGISTRY[name]


def space_name(space: SearchSpace | type[SearchSpace]) -> str:
    """The name to write into ``arch.json``, one that another process can resolve.

    Built-in and entry-point spaces are found by their registry name anywhere; a user's class
    registered at import time is only known once its module is imported, so it is written as
    ``module:ClassName``.
    """
    cls = space if isinstance(space, type) else type(space)
    registered = getattr(cls, "space_name", None)
    if registered and _REGISTRY.get(registered) is cls and (
            cls.__module__.startswith("nasseg.") or registered in _FROM_ENTRY_POINTS):
        return registered
    return f"{cls.__module__}:{cls.__qualname__}"


def create_space(name: str, knobs: Mapping[str, Any] | None = None, **kwargs: Any) -> SearchSpace:
    """Build the space ``name`` with constructor ``kwargs`` and the knob values ``knobs``.

    An unknown knob name raises :class:`KnobError` with the space's knob names; an argument
    the constructor does not take, or a value of the wrong type, a ``ValueError`` naming the
    arguments.
    """
    cls = get_space_class(name)
    with fixed_knobs(knobs or {}):
        try:
            space = cls(**kwargs)
        except TypeError as exc:  # a value of the wrong type, e.g. features=abc
            raise ValueError(f"space {name!r} cannot be built with "
                             f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}: {exc}"
                             ) from exc
    unknown = sorted(set(knobs or {}) - set(space.knob_specs))
    if unknown:
        known = ", ".join(sorted(space.knob_specs)) or "none"
        raise KnobError(f"space {name!r} has no knob {', '.join(map(repr, unknown))}; "
                        f"its knobs: {known}")
    return space
