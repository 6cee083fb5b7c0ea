"""An undo stack: each completed step pushes its inverse; on failure they run in reverse."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Rollback:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []

    def push(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        self._undo.append((what, fn, args))

    def unwind(self) -> list[str]:
        """Undo in reverse order; an undo that fails is logged and the rest still run."""
        problems = []
        while self._undo:
            what, fn, args = self._undo.pop()
            try:
                fn(*args)
            except Exception as e:  # keep undoing: one stuck step must not leak the others
                log.warning("Failed to undo '%s': %s, ignoring.", what, e)
                problems.append(f"{what}: {e}")
        return problems
