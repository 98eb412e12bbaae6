"""The ``biasunlearn`` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from biasunlearn import __version__
from biasunlearn.errors import BiasUnlearnError

log = logging.getLogger("biasunlearn")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "peft", "accelerate", "urllib3", "huggingface_hub", "datasets"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def build_parser() -> argparse.ArgumentParser:
    from biasunlearn.cli import compare_cmd, data_cmd, eval_cmd, run_cmd, train_cmd, transfer_cmd

    parser = argparse.ArgumentParser(
        prog="biasunlearn",
        description="Remove social bias from causal language models by unlearning, and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"biasunlearn {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in (run_cmd, eval_cmd, train_cmd, compare_cmd, transfer_cmd, data_cmd):
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.func(args) or 0)
    except BiasUnlearnError as e:
        print(f"biasunlearn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
