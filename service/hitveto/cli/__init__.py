"""`hitveto` command line: parses arguments, then calls one function.

One module per group of commands; each command is an `add_<name>` that declares its arguments and
the function that runs it, side by side. Heavy imports (torch, psana) happen inside the functions,
so `hitveto --help` and `hitveto ctl` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hitveto.cli import daemon, data, model


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        from hitveto.io.xtc2 import DetectorNotInRun  # here: `hitveto ctl` stays free of numpy

        if not isinstance(e, DetectorNotInRun):
            raise
        print(f"hitveto: {e}", file=sys.stderr)  # the user's input, not a bug: no traceback
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hitveto", description=__doc__.split("\n", 1)[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    for group in (daemon, data, model):
        group.register(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
