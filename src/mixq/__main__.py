"""``python -m mixq``: the command line (today: ``demo``)."""

from __future__ import annotations

import argparse
import sys

from mixq import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixq", description="Mixed precision and int8 quantization for PyTorch.")
    parser.add_argument("--version", action="version", version=f"mixq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, quantize, export and measure a CNN on the bundled digits data")
    demo.add_argument("--out", default="mixq-report", help="report directory (default: mixq-report)")
    demo.add_argument("--quick", action="store_true", help="fewer epochs and timing runs (a smoke test)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from mixq.demo import run_demo

        report = run_demo(args.out, quick=args.quick)
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
