"""From parsed arguments to a call: an option's dest is the name of the parameter it sets, so a
command passes its arguments on by name instead of repeating each one."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def call_with(fn: Callable[..., T], args: argparse.Namespace, **given: Any) -> T:
    """fn called with every parameter of its that `args` has a value for, `given` overriding them."""
    names = inspect.signature(fn).parameters
    return fn(**{**{n: getattr(args, n) for n in names if hasattr(args, n)}, **given})
