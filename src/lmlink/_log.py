"""The ``lmlink`` logger, with ``logging`` imported by the first record.

``logging`` brings ``re``, ``traceback`` and ``string`` with it: a fifth of what
``import lmlink`` would cost. lmlink logs only on retries, skipped chunks and adaptations,
so most programs never pay for it. Records carry the caller's line (``stacklevel``).

The ``NullHandler`` goes on the ``lmlink`` logger before any record, so the library never
prints; when ``logging`` is loaded already (it is in any program that configures logging,
and under pytest), it goes on at import, where a check after ``import lmlink`` sees it.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["log"]


class _LazyLogger:
    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger: Any = None

    def _get(self) -> Any:
        if self._logger is None:
            import logging

            logger = logging.getLogger("lmlink")
            if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
                logger.addHandler(logging.NullHandler())
            self._logger = logger
        return self._logger

    def debug(self, msg: str, *args: object) -> None:
        self._get().debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: object) -> None:
        self._get().info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        self._get().warning(msg, *args, stacklevel=2)


log = _LazyLogger()
if "logging" in sys.modules:
    log._get()
