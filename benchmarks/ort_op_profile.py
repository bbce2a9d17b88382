"""Where a CNN file's time goes in ONNX Runtime: per kind of convolution (stem, depthwise, other) and per other
operator, from ORT's own profiler (``enable_profiling``), for an fp32 file beside an int8 one.

The profiler names the nodes of ONNX Runtime's optimised graph (fused, renamed, int8 convolutions channels-last),
so each conv's kind is read off that graph, which the session also writes out: its weight's input channels times
its groups is 3 for the stem; a conv with one group per input channel is depthwise; anything else "other conv".
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

CONVS = ("Conv", "QLinearConv", "FusedConv")


def _conv_kinds(optimized: Path) -> dict[str, str]:
    """Node name -> kind for every convolution of the optimised model at ``optimized``."""
    import onnx

    graph = onnx.load(str(optimized)).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    kinds = {}
    for node in graph.node:
        if node.op_type not in CONVS:
            continue
        w = weights.get(node.input[3 if node.op_type == "QLinearConv" else 1])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if w is None:
            kinds[node.name] = "other conv"
        elif w[1] * group == 3:
            kinds[node.name] = "stem conv"
        else:
            kinds[node.name] = "depthwise conv" if group > 1 and w[1] == 1 else "other conv"
    return kinds


def profile(path: Path, feeds: dict[str, np.ndarray], threads: int, calls: int = 20) -> dict[str, float]:
    """Milliseconds per call spent in each kind of node of the file at ``path`` (after 5 warm-up calls)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    options.enable_profiling, options.profile_file_prefix = True, str(path.with_suffix(""))
    optimized = path.with_name(path.stem + "_optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kinds = _conv_kinds(optimized)
    for _ in range(5):
        session.run(None, feeds)
    for _ in range(calls):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            per_node[kinds.get(node, event["args"]["op_name"]) + "\0" + node].append(event["dur"] / 1e3)
    totals: dict[str, float] = collections.Counter()
    for key, times in per_node.items():  # the first call's times (weights packed, buffers sized) left out
        totals[key.split("\0")[0]] += float(np.mean(times[1:] or times))
    return dict(totals)


def markdown(fp32: dict[str, float], int8: dict[str, float], title: str) -> list[str]:
    """A table of both profiles by kind, largest fp32 share first, with the int8 / fp32 time ratio."""
    lines = [f"#### {title}", "", "| node kind | fp32 ms | int8 ms | int8 / fp32 |", "|---|---:|---:|---:|"]
    for kind in sorted(set(fp32) | set(int8), key=lambda k: (-fp32.get(k, 0.0), -int8.get(k, 0.0))):
        a, b = fp32.get(kind, 0.0), int8.get(kind, 0.0)
        lines.append(f"| {kind} | {a:.2f} | {b:.2f} | {f'{b / a:.2f}x' if a else '–'} |")
    total_a, total_b = sum(fp32.values()), sum(int8.values())
    lines += [f"| **all** | **{total_a:.2f}** | **{total_b:.2f}** | **{total_b / total_a:.2f}x** |", ""]
    return lines
