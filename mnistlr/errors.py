"""The one exception type for mistakes a user can fix, and how every entry point reports it."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

DEBUG_ENV = "MNISTLR_DEBUG"
F = TypeVar("F", bound=Callable[..., Any])


class MnistlrError(Exception):
    """A user-facing error: its message is one line naming the bad value and what is accepted."""


def user_errors(fn: F) -> F:
    """Turn an MnistlrError into 'error: ...' on stderr and exit code 1 (traceback only with MNISTLR_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MnistlrError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper  # type: ignore[return-value]
