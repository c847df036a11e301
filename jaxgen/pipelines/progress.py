"""Per-step progress from inside a compiled loop: a host callback that ticks the current bar.

Compiled programs are shared between pipeline instances, so the callback cannot close over one
instance's bar; it ticks whichever bar ``active`` installed for the duration of a call. The
callback runs on an XLA runtime thread, so the bar is kept in a plain (locked) slot, not a
thread-local.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import jax

_lock = threading.Lock()
_bars: list[Any] = []  # a stack: the innermost active bar is ticked


def _tick(_: Any) -> None:
    with _lock:
        bar = _bars[-1] if _bars else None
    if bar is not None:
        bar.update(1)


def tick(step: jax.Array) -> None:
    """Call inside a compiled loop body: advances the active progress bar by one step."""
    jax.debug.callback(_tick, step)


@contextlib.contextmanager
def active(bar: Any) -> Iterator[Any]:
    """Install ``bar`` (anything with ``update(n)`` and ``close()``) as the bar ``tick`` advances.

    The caller must wait for the compiled call (``block_until_ready``) inside the ``with``.
    """
    with _lock:
        _bars.append(bar)
    try:
        yield bar
    finally:
        jax.effects_barrier()  # every tick of this call has run
        with _lock:
            _bars.remove(bar)
        bar.close()
