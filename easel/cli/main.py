"""`easel` command line: `easel generate ...` (and `python -m easel ...`)."""

import argparse
import logging
import os
import sys

from easel.cli.generate import add_generate_parser
from easel.cli.serve import add_serve_parser
from easel.errors import EaselError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easel", description="Easel: diffusion inference and serving.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(commands)
    add_serve_parser(commands)
    return parser


def quiet_libraries(log_level: str) -> None:
    """transformers and diffusers print advisories and a loading bar per component; show them from level info."""
    if logging.getLevelName(log_level.upper()) > logging.INFO:
        for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(variable, "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.log_level)
    try:
        return args.run(args)
    except EaselError as error:
        print(f"easel: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("easel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
