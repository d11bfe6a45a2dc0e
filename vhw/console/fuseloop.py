"""Serving a pyfuse3 file system: the save folder (:mod:`vhw.console.savefs`) runs this way, and so
does the benchmark's ceiling (``tools/fusefloor.py``). The titles' mount is compiled
(:mod:`vhw.datapath`) and does not.

* :func:`errno_guard`: a decorator for handlers, the one place where exceptions become errnos (an
  exception escaping a pyfuse3 handler can hang or kill the mount: libfuse/pyfuse3 #82, #93).
* :func:`serve_operations`: mount, serve on a trio loop until unmounted or signalled, unmount.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from ..errors import StateError
from .mountpoints import clear_stale

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=Handler)


def errno_guard(translate: Callable[[Exception], int | None], logger: logging.Logger) -> Callable[[H], H]:
    """A decorator for FUSE handlers, the one place where exceptions become errnos: ``translate``
    gives the errno of the exceptions a file system knows (None: not one of them), an OSError keeps
    its own, anything else is logged as an internal error and becomes EIO. Nothing else escapes."""

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handler(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception as exc:
                code = translate(exc)
                if code is None and isinstance(exc, OSError):
                    code = exc.errno or errno.EIO
                if code is None:
                    logger.exception("internal error in %s", handler.__name__)
                    code = errno.EIO
                raise pyfuse3.FUSEError(code) from None

        return cast(H, wrapper)

    return decorate


def serve_operations(
    fs: pyfuse3.Operations,
    mountpoint: Path,
    options: set[str],
    *,
    ready: Callable[[], None],
    tasks: Sequence[Callable[[], Awaitable[object]]] | None = None,
) -> None:
    """Mount ``fs`` at ``mountpoint`` and serve it until unmounted, SIGINT, SIGTERM or SIGHUP;
    always unmounts on the way out."""
    clear_stale(mountpoint)
    try:
        pyfuse3.init(fs, str(mountpoint), set(pyfuse3.default_options) | options)
    except RuntimeError as exc:
        raise StateError(f"{mountpoint}: cannot mount ({exc})") from None
    try:
        trio.run(_serve, ready, tasks or [])
    finally:
        pyfuse3.close(unmount=True)


async def _serve(ready: Callable[[], None], tasks: Sequence[Callable[[], Awaitable[object]]]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals)
        for task in tasks:
            nursery.start_soon(task)
        ready()
        await pyfuse3.main()  # returns when the file system is unmounted or terminated
        nursery.cancel_scope.cancel()


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("signal %d: unmounting", sig)
            pyfuse3.terminate()
            return
