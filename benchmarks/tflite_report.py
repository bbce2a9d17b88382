"""The Markdown report of ``bench_tflite.py``, rendered from its JSON summary."""

from __future__ import annotations

from typing import Any


def sweep_lines(rows: list[dict[str, Any]], rounds: int, runs: int) -> list[str]:
    """The "where int8 pays" section: one row per swept shape, then what the rows say."""
    lines = ["", "## Where int8 pays on this CPU", "",
             f"Untrained models of each shape (timing does not depend on the weights), fp32 / mixq full-integer / "
             f"mixq dynamic-range files, batch 1, 2 threads, all {len(rows) * 3} files timed interleaved "
             f"({rounds} rounds x {runs} invokes). GMAC/s: the model's multiply-accumulates over the median time.", "",
             "| model | input | MMACs | fp32 (ms) | full-integer (ms) | full-int vs fp32 | dynamic-range vs fp32 | "
             "fp32 GMAC/s | int8 GMAC/s | int8 ops on XNNPACK |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_size']}x{r['image_size']} | {r['macs'] / 1e6:.1f} | "
                     f"{r['fp32_ms']:.4f} | {r['full-integer_ms']:.4f} | {r['full-integer_vs_fp32']:.2f}x | "
                     f"{r['dynamic-range_vs_fp32']:.2f}x | {r['fp32_gmacs']:.0f} | {r['int8_gmacs']:.0f} | "
                     f"{r['int8_ops_on_xnnpack']} |")
    met = [r for r in rows if r["full-integer_vs_fp32"] <= 0.25]
    ratios = sorted(r["full-integer_vs_fp32"] for r in rows)
    fp32, int8 = sorted(r["fp32_gmacs"] for r in rows), max(r["int8_gmacs"] for r in rows)
    text = (f"Full-integer <= 0.25x fp32 in {len(met)} of {len(rows)} shapes"
            + (f" ({', '.join(r['config'] for r in met)})" if met else "")
            + f"; full-integer vs fp32 ranged {ratios[0]:.2f}x-{ratios[-1]:.2f}x. fp32 ran at {fp32[0]:.0f}-"
            f"{fp32[-1]:.0f} GMAC/s, full-integer at up to {int8:.0f} GMAC/s.")
    for stem in (r for r in rows if r["stages"] == 0):
        size = f"{stem['image_size']}x{stem['image_size']}"
        text += (f" A stem-only model ({stem['channels']} channels at {size}: the first conv, 1 input channel, "
                 "9 multiply-accumulates per output, then pooling and the head) took "
                 f"{stem['full-integer_vs_fp32']:.2f}x the fp32 time in int8 ({stem['full-integer_ms']:.4f} ms)")
        deeper = [r for r in rows if r["stages"] > 0 and (r["image_size"], r["channels"])
                  == (stem["image_size"], stem["channels"])]
        text += "".join(f", {stem['full-integer_ms'] / r['full-integer_ms']:.0%} of the full-integer time of "
                        f"{r['model']}" for r in deeper) + "."
    return lines + ["", text]


def report(summary: dict[str, Any]) -> list[str]:
    """The Markdown report of one run (rendered from its JSON summary)."""
    machine, rows, args = summary["machine"], summary["rows"], summary
    fi, peer = rows["mixq full-integer"], rows["PT2E full-integer (peer)"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in machine["flags"].items())
    lines = [f"# LiteRT files from mixq: {summary['model']}, {summary['params']:,} parameters, "
             f"{summary['macs'] / 1e6:.1f} MMACs, batch 1, 2 threads", "",
             f"CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs); flags: {flags}. "
             f"ai-edge-litert {summary['litert']}, torch {summary['torch']}.",
             f"Trained {args['epochs']} epochs: fp32 test accuracy {rows['fp32']['accuracy']:.4f} on "
             f"{summary['test_images']} images.",
             f"Timing: {args['rounds']} interleaved rounds x {args['runs']} invokes per file; medians over all "
             f"invokes. Load average (1 min): {summary['load_average_1m']['start']:.2f} at the start, "
             f"{summary['load_average_1m']['end']:.2f} at the end. LiteRT added "
             f"{summary['xnnpack_worker_threads']} worker thread(s) for a 2-thread session (1 = threads honoured).",
             "", "| file | size (KB) | vs fp32 size | accuracy | agreement with fp32 | median (ms) | p90 (ms) | "
             "vs fp32 time | I/O | ops on XNNPACK | Conv/FC on XNNPACK | Conv/FC input types | convert (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['size_kb']:.1f} | {r['vs_fp32_size']:.2f}x | {r['accuracy']:.4f} | "
                     f"{r['agreement_with_fp32']:.2%} | {r['median_ms']:.4f} | {r['p90_ms']:.4f} | "
                     f"{r['vs_fp32_time']:.2f}x | {r['io_types']} | {r['ops_on_xnnpack']}/{r['ops']} | "
                     f"{r['compute_on_xnnpack']}/{r['compute_ops']} | {'; '.join(r['compute_input_types'])} | "
                     f"{r['convert_s']:.1f} |")
    sim_row, targets = summary["full_integer_vs_simulation"], summary["targets"]
    lines += ["", f"mixq full-integer vs mixq's PyTorch simulation: max {sim_row['max_steps']:.0f} output step(s), "
              f"{sim_row['within_one_step']:.2%} of logits within one step, argmax agreement "
              f"{sim_row['argmax_agreement']:.2%}.",
              f"Targets: full-integer <= 0.25x fp32 time: {targets['full_integer_time_le_0.25x_fp32']} "
              f"({fi['vs_fp32_time']:.2f}x); accuracy >= peer: {targets['full_integer_accuracy_ge_peer']} "
              f"({fi['accuracy']:.4f} vs {peer['accuracy']:.4f})."]
    if summary.get("sweep"):
        lines += sweep_lines(summary["sweep"], args["rounds"], args["runs"])
    return lines
