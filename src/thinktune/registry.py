"""Named implementations of one kind, chosen by a recipe field: rewards, policy losses, advantage scales, data
sources, rollout backends and trackers. One helper for all of them, so an unknown name is reported the same way
everywhere: the field, the name, and the names it knows.

    LOSSES = Registry("grpo.loss")

    @LOSSES.register("token")
    def token_level_loss(x): ...

    LOSSES.lookup("tokn")  # UnknownName: grpo.loss: unknown 'tokn'; known: token
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class UnknownName(ValueError):
    """A name no implementation is registered under."""


class Registry(dict):
    """A ``dict`` of name -> implementation for the recipe field ``field``, in the order they were registered.

    >>> backends = Registry("rollout.backend")
    >>> backends["native"] = object
    >>> backends.lookup("native") is object, backends.unknown("vlm")
    (True, "rollout.backend: unknown 'vlm'; known: native")
    """

    def __init__(self, field: str, entries: dict | None = None):
        super().__init__(entries or {})
        self.field = field

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: put the function or class under ``name``."""

        def wrap(implementation):
            self[name] = implementation
            return implementation

        return wrap

    def unknown(self, name: str) -> str:
        return f"{self.field}: unknown {name!r}; known: {', '.join(self)}"

    def lookup(self, name: str):
        if name not in self:
            raise UnknownName(self.unknown(name))
        return self[name]
