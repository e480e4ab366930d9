"""A name -> object registry filled by a decorator (timm's ``@register_model`` pattern).

Models, losses, augmentation policies and batch mixers each keep one ``Registry``; an unknown name
is answered with the list of valid ones::

    LOSSES: Registry[type[nn.Module]] = Registry("loss")

    @LOSSES.register("dice")
    class DiceLoss(nn.Module): ...

    LOSSES.get("dice")  # -> DiceLoss
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from breastdx.errors import BreastdxError

T = TypeVar("T")


class RegistryError(BreastdxError):
    """Base class: a registry lookup or registration broke a rule."""

    code = "registry_error"
    title = "Registry error"


class UnknownNameError(RegistryError, KeyError):
    """The name is not registered; the message lists the valid names.

    Also a ``KeyError``, so ``except KeyError`` around a lookup keeps working.
    """

    code = "unknown_name"
    title = "Unknown name"

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


class DuplicateNameError(RegistryError, ValueError):
    """A second object was registered under a name already taken."""

    code = "duplicate_name"
    title = "Duplicate registry name"


class Registry(Generic[T]):
    """Objects of one kind, by unique name.

    Args:
        kind: What the registry holds, in words ("model", "loss"); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that registers its target under ``name`` and returns it unchanged."""
        if not name or name != name.strip():
            raise RegistryError(f"a {self.kind} name must be non-empty without outer spaces")

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise DuplicateNameError(
                    f"{self.kind} name {name!r} is already registered; names must be unique",
                    kind=self.kind,
                    name=name,
                )
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the valid names.
        """
        try:
            return self._items[name]
        except KeyError:
            pass
        valid = ", ".join(self.names()) or "(none registered)"
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint}; valid {self.kind} names: {valid}",
            kind=self.kind,
            name=str(name),
            valid=list(self.names()),
        )

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self.names())})"
