"""`--quick` for every benchmark: the same script on the least work that still runs each of its parts
and prints each of its tables. The test suite runs every bench this way (tests/test_bench.py), so a
bench that stopped running is noticed the day it breaks; the figures of a quick run mean nothing."""

from __future__ import annotations

import argparse


def parse_args(parser: argparse.ArgumentParser, **quick: object) -> argparse.Namespace:
    """Parse the command line; with `--quick`, the `quick` values replace the defaults (options given
    on the command line still win, since argparse keeps what the namespace already holds)."""
    shown = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"a smoke run, the same as {shown}")
    args = parser.parse_args()
    if args.quick:
        args = parser.parse_args(namespace=argparse.Namespace(**quick))
    return args
