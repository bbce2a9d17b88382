"""The ``mixq`` command line: ``demo``, ``quantize``, ``autoquant``, ``bench`` and ``inspect`` (see ``mixq --help``)."""

from mixq.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
