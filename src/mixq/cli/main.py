"""``mixq``: the command line. Each subcommand lives in its own module and maps onto one library entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from mixq import __version__
from mixq.cli import autoquant, bench, demo, inspect, quantize
from mixq.cli.errors import FAILURE, USAGE_ERROR, CliError, first_line
from mixq.cli.failures import describe_disk_error, disk_error
from mixq.cli.formatting import HelpFormatter
from mixq.cli.streams import pipe_safe_stdout

SUBCOMMANDS = (demo, quantize, autoquant, bench, inspect)


def build_parser() -> argparse.ArgumentParser:
    """The ``mixq`` argument parser with every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="the command's options from a YAML/JSON file (or a run's .mixq.json sidecar, to repeat "
                             "it); options given on the command line win")
    parser = argparse.ArgumentParser(
        prog="mixq", formatter_class=HelpFormatter,
        description="Mixed precision training and int8 quantization for PyTorch, deployed on ONNX Runtime.",
        epilog="Run `mixq COMMAND --help` for a command's options. Start with `mixq demo`.")
    parser.add_argument("--version", action="version", version=f"mixq {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.register(sub, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 bad input, 1 failure, 130 interrupted by Ctrl-C,
    143 terminated by SIGTERM; either signal removes partial outputs and leaves existing files as they were)."""
    from mixq.cli.config_file import expand_config
    from mixq.report.files import Terminated, sigterm_as_interrupt

    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        argv = expand_config(argv)  # --config FILE: the file's options, before the command line's
    except CliError as err:
        print(f"mixq: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="mixq: %(levelname)s: %(message)s")
    if getattr(args, "trust_pickle", False):
        print("mixq: warning: --trust-pickle unpickles the weights file, which can run arbitrary code; use it only "
              "for files you trust", file=sys.stderr)
    try:
        with sigterm_as_interrupt(), pipe_safe_stdout():
            return args.run(args)
    except CliError as err:
        if args.debug:
            raise
        print(f"mixq {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except Terminated:
        print(f"mixq {args.command}: terminated (SIGTERM); no output was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mixq {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        if (disk := disk_error(err)) is not None:
            print(f"mixq {args.command}: error: {describe_disk_error(disk)}", file=sys.stderr)
            return FAILURE
        print(f"mixq {args.command}: error: {type(err).__name__}: {first_line(err)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return FAILURE
