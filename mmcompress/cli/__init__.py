"""Command line: ``mmcompress compress | list | ...``.

Each subcommand lives in its own module with ``add_parser(subparsers)``; add a module name to ``SUBCOMMANDS`` to
add one. Errors from bad input print one line (``error: ...``) and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import MMCompressError

SUBCOMMANDS = ["compress", "list_cmd", "train", "eval_cmd", "serve"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, ``error: ...`` (exit 2) like every other bad input,
    rather than the usage block and then the message; subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="mmcompress", description="Prompt compression for LLMs and VLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and model loading")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except MMCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _quiet_libraries() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers is a dependency
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
