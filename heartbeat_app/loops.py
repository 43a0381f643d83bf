"""What the per-loop services share: one instance per event loop, one background tick."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from . import conf

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One object per running event loop, made by ``factory`` on first use."""

    def __init__(self, factory: Callable[[], T]):
        self.factory = factory
        self.objects: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        obj = self.objects.get(loop)
        if obj is None:
            obj = self.objects[loop] = self.factory()
        return obj

    def set(self, obj: T | None) -> None:
        """Install (or with None, forget) the running loop's object: tests use this."""
        loop = asyncio.get_running_loop()
        if obj is None:
            self.objects.pop(loop, None)
        else:
            self.objects[loop] = obj


class Ticking:
    """A service with a background task that calls ``step()`` every HEARTBEAT_TICK.

    Started in one place (``_ensure_running``), it runs for as long as the
    process does once it has had work: an idle process keeps beating, so it
    never looks lost. A failing tick is logged, never fatal.
    """

    _task: asyncio.Task | None = None

    async def step(self) -> None:
        raise NotImplementedError

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(conf.tick())
            try:
                await self.step()
            except Exception:
                logger.exception("%s tick failed", type(self).__name__)
