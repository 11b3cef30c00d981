"""The private event loop of LLMScorer: one daemon thread running asyncio, blocked on from any thread.

asyncio is imported when the thread starts, not with this module: a served bundle whose LLM scores
all come from the cache never starts it.
"""
from __future__ import annotations

import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread; callers block on its futures."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="textclassify-llm", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        import asyncio

        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("LLMScorer.score cannot be called from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()
