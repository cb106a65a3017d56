"""What every command-line entry point shares: user errors as one line and a non-zero exit."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from mnistlr.errors import MnistlrError

DEBUG_ENV = "MNISTLR_DEBUG"
F = TypeVar("F", bound=Callable[..., Any])


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
