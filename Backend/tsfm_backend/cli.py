"""``tsfm-backend`` command line: a dispatcher over the modules in ``tsfm_backend.commands``.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and imports
torch only inside ``run``, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: tuple[tuple[str, str], ...] = (
    ("info", "tsfm_backend.commands.info"),
    ("predict", "tsfm_backend.commands.predict"),
    ("serve", "tsfm_backend.commands.serve"),
    ("models", "tsfm_backend.commands.models"),
    ("import", "tsfm_backend.commands.import_model"),
    ("fetch", "tsfm_backend.commands.fetch"),
    ("segment", "tsfm_backend.commands.segment"),
    ("demo", "tsfm_backend.commands.demo"),
)


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsfm-backend", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError, PermissionError) as error:
        print(f"tsfm-backend {args.command}: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        # The limits refuse what they can foresee; anything else that runs out still ends in one line.
        print(f"tsfm-backend {args.command}: error: out of memory; try a smaller image, --fast, a larger "
              "--step or a smaller --batch where the command has them", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
