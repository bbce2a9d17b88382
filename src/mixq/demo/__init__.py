"""The end-to-end demo on a built-in default: a residual CNN trained on scikit-learn's bundled digits in fp32 and
with mixed precision, quantized every way mixq can, exported to ONNX, measured on ONNX Runtime, and reported.

Example::

    from mixq.demo import run_demo
    outcome = run_demo("mixq-report", quick=True)
    print(outcome.report)
"""

from mixq.demo.model import DigitsCNN, load_digits_split, train
from mixq.demo.run import DemoOutcome, run_demo
from mixq.demo.sections import SECTIONS
from mixq.demo.variants import VARIANTS, Variant

__all__ = ["SECTIONS", "VARIANTS", "DemoOutcome", "DigitsCNN", "Variant", "load_digits_split", "run_demo", "train"]
