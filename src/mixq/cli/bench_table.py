"""``mixq bench``'s output: the Markdown table (one row per file and runtime), its notes, and which runtime and
precision was fastest in each column."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def row_label(entry: dict[str, Any]) -> str:
    """``openvino:default (bf16)``: the runtime as ``--runtime`` names it, and the float precision it ran."""
    runtime, precision = entry["runtime"], entry.get("precision")
    return runtime if not precision or runtime.endswith(f":{precision}") else f"{runtime} ({precision})"


def table(results: list[dict[str, Any]], settings: list[Any], named: list[bool], show_runtime: bool = False) -> str:
    """Markdown table: model, (runtime,) size, and median / p90 latency per setting (batch size or shape); ``named``:
    per row, whether its runtime takes inputs by name (ONNX) or its own signature (a .tflite file)."""
    headers = ["model"] + (["runtime"] if show_runtime else []) + ["size (KB)"]
    headers += [h for st in settings for h in (f"{st.header} median (ms)", f"{st.header} p90 (ms)")]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---|" * show_runtime + "---:|" * (len(headers) - 1 -
                                                                                       show_runtime)]
    for r in results:
        cells = [Path(r["model"]).name] + ([row_label(r)] if show_runtime else []) + [f"{r['size_bytes'] / 1024:.1f}"]
        for st in settings:
            lat = r["latency"][st.key]
            cells += ["n/a", "n/a"] if "error" in lat else [f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"note: {Path(r['model']).name}{f' on {row_label(r)}' if show_runtime else ''} {st.header}: "
             f"{r['latency'][st.key]['error']}" for r in results for st in settings if "error" in r["latency"][st.key]]
    if any(named):
        notes.append(f"inputs: {shapes_text({st.header: st.shapes for st in settings})}")
    seen = set()
    for r, by_name in zip(results, named, strict=True):  # a .tflite file's inputs follow its own signature
        if not by_name and r["inputs"] and r["model"] not in seen:
            seen.add(r["model"])
            own = {st.header: r["inputs"][st.key] for st in settings if st.key in r["inputs"]}
            notes.append(f"inputs of {Path(r['model']).name}: {shapes_text(own)}")
    if show_runtime:
        notes += fastest(results, settings)
    return "\n".join(lines + notes)


def fastest(results: list[dict[str, Any]], settings: list[Any]) -> list[str]:
    """One line per setting: the fastest file and runtime (median), and how much faster than the next runtime."""
    lines = []
    for st in settings:
        timed = sorted((r["latency"][st.key]["median_ms"], Path(r["model"]).name, row_label(r)) for r in results
                       if "error" not in r["latency"][st.key])
        if len(timed) < 2:
            continue
        best_ms, name, label = timed[0]
        lines.append(f"fastest {st.header}: {name} on {label}, {best_ms:.3f} ms ({timed[1][0] / best_ms:.2f}x "
                     f"faster than the next, {timed[1][1]} on {timed[1][2]})")
    return lines


def shapes_text(shapes: dict[str, dict[str, Any]]) -> str:
    """``b1: x=1x3, y=1x4; b8: ...`` from column header -> input name -> shape."""
    return "; ".join(f"{header}: " + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in named.items())
                     for header, named in shapes.items())
