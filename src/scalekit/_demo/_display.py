"""The demo's live display: plain lines, or a rich panel on a terminal with rich."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Display", "RichDisplay", "display_for"]


class Display:
    """Plain lines: a status line a second, each event, the resharding bar."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self, text: str) -> None:
        self.out(text)

    def event(self, text: str) -> None:
        self.out(f"  ! {text}")

    def bar(self, text: str) -> None:
        self.out(f"    {text}")


class RichDisplay(Display):
    """One panel redrawn in place: the status, the resharding bar, the last events."""

    def __init__(self, out: Callable[[str], None]) -> None:
        super().__init__(out)
        self._lock = threading.Lock()
        self._status = "starting"
        self._bar = ""
        self._events: list[str] = []
        self._live: Any = None

    def _render(self) -> Any:
        from rich.console import Group  # type: ignore[import-not-found,unused-ignore]
        from rich.panel import Panel  # type: ignore[import-not-found,unused-ignore]
        from rich.text import Text  # type: ignore[import-not-found,unused-ignore]

        lines: list[Any] = [Text(self._status, style="bold")]
        if self._bar:
            lines.append(Text(self._bar, style="cyan"))
        lines.extend(Text(f"! {event}", style="yellow") for event in self._events[-8:])
        return Panel(Group(*lines), title="scalekit demo")

    def _redraw(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def start(self) -> None:
        from rich.live import Live  # type: ignore[import-not-found,unused-ignore]

        self._live = Live(self._render(), refresh_per_second=4)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def status(self, text: str) -> None:
        with self._lock:
            self._status = text
            self._redraw()

    def event(self, text: str) -> None:
        with self._lock:
            self._events.append(text)
            self._redraw()

    def bar(self, text: str) -> None:
        with self._lock:
            self._bar = text
            self._redraw()


def display_for(out: Callable[[str], None]) -> Display:
    """A rich display when rich is installed, the output is ``print`` and stdout a
    terminal; plain lines otherwise (a pipe, a log, a test)."""
    if out is print and sys.stdout.isatty():
        try:
            import rich  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            pass
        else:
            return RichDisplay(out)
    return Display(out)
