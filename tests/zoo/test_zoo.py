"""The conformance zoo: every architecture of ``tests/zoo/cases.py`` in every mode either works (quantized,
exported, run by ONNX Runtime at two shapes with simulation == runtime, within int8 noise of fp32) or is refused
with a reason. ``make test`` runs a representative subset (``DEFAULT_RUNS``); the rest is nightly.
``benchmarks/zoo.py`` runs the same checks as a table (``benchmarks/results/zoo.md``).

A case that does neither is a finding: it is listed in ``KNOWN`` with its reason as a strict xfail, so it flips
(and must be removed from the list) once fixed.
"""

from __future__ import annotations

import pytest

from tests.zoo.cases import CASES
from tests.zoo.conformance import MODES, run_case

pytest.importorskip("transformers")

# (case, mode) in make test (about a minute on 2 quiet cores): one encoder, one decoder and one CNN in a mode each,
# and, in static mode, the hand-written blocks a class-name swap would silently alter
# wav2vec2 static: an audio encoder whose positional conv is weight_norm-parametrized (a crash nightly alone caught)
# mobilenet-v2 QAT: a CNN captured in training mode with TF-"same" pads folded into its QAT convolutions
DEFAULT_RUNS = {("bert", "static"), ("llama", "dynamic"), ("resnet", "static"), ("wav2vec2", "static"),
                ("mobilenet-v2", "qat"),
                *((name, "static") for name in ("same-pad-conv", "functional-conv", "ws-conv", "permuting-linear",
                                                "lora-linear", "relu6-mbconv"))}

# (case, mode) -> what goes wrong today (found by the zoo; benchmarks/results/zoo.md has the whole table); none now
KNOWN: dict[tuple[str, str], str] = {}


def _params() -> list:
    params = []
    for case in CASES:
        for mode in MODES:
            marks = [] if (case.name, mode) in DEFAULT_RUNS else [pytest.mark.nightly]
            if (case.name, mode) in KNOWN:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[case.name, mode]))
            params.append(pytest.param(case, mode, id=f"{case.name}-{mode}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "mode"), _params())
def test_architecture_works_or_is_refused_with_a_reason(case, mode, tmp_path):
    outcome = run_case(case, mode, tmp_path)
    assert outcome.status != "fail", outcome.reason
    if outcome.status == "refused":
        assert outcome.reason.strip(), "refused without a reason"
    else:
        assert outcome.quantized > 0
