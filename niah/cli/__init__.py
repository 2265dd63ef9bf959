"""The `niah` command: a thin shell over the library.

Every module in this package that defines `register(subparsers)` adds one command; the
command's handler returns the exit code. NiahError becomes one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
from typing import NoReturn

from niah import __version__
from niah.errors import EXIT_BAD_INPUT, NiahError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="niah",
        description="Token-exact needle-in-a-haystack checks for long-context llama-server launches.",
    )
    parser.add_argument("--version", action="version", version=f"niah {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    from niah.launch.server import install_signal_handlers

    restore = install_signal_handlers()  # SIGTERM, SIGHUP, SIGINT unwind, so every server is stopped
    try:
        return int(args.func(args))
    except NiahError as exc:
        print(f"niah: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("niah: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, int) and exc.code > 128:
            print(f"niah: stopped by {signal.Signals(exc.code - 128).name}", file=sys.stderr)
        raise
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
