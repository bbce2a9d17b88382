"""``python -m mixq demo --quick`` end to end in a subprocess: it runs, writes every report file, and the numbers
in report.md, report.html and on the terminal are the ones in report.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixq.demo import VARIANTS

PLOTS = ["training.png", "accuracy_vs_size.png", "latency.png", "layer_error.png", "autoquant_sensitivity.png"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    proc = subprocess.run([sys.executable, "-m", "mixq", "demo", "--quick", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, json.loads((out / "report.json").read_text())


def test_files_and_final_line(demo_run):
    out, proc, _ = demo_run
    assert proc.stdout.rstrip().splitlines()[-1] == f"report: {out / 'report.md'}"
    for name in ["report.md", "report.html", "report.json", *PLOTS]:
        assert (out / name).stat().st_size > 0, name
    for png in PLOTS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_variants_measured_on_onnx_runtime(demo_run):
    out, proc, report = demo_run
    rows = {r["variant"]: r for r in report["variants"]}
    assert list(rows) == [v.name for v in VARIANTS]
    assert {"fp32", "static int8", "dynamic int8", "fp16"} <= set(rows)
    for name, r in rows.items():
        assert (out / r["onnx_file"]).stat().st_size == pytest.approx(r["size_kb"] * 1024)
        assert r["accuracy"] > 0.8 and r["agreement"] >= 0.99, name
        assert 0 < r["latency_b1_ms"] <= r["latency_b1_p90_ms"] and r["latency_b32_ms"] > 0
    assert rows["static int8"]["max_abs_diff_vs_pytorch"] < 0.05
    assert rows["static int8"]["size_kb"] < rows["fp32"]["size_kb"]
    assert "QLinearConv" in rows["static int8"]["integer_kernels"]
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for r in rows.values():  # the same numbers in the Markdown, the HTML and on the terminal
        row = f"| {r['variant']} | {r['size_kb']:.1f} | {r['accuracy']:.4f} | {r['accuracy_delta_pp']:+.2f} |"
        assert row in md and row in proc.stdout
        assert f"<td class=\"r\">{r['latency_b32_ms']:.3f}</td>" in html


def test_training_and_layer_error(demo_run):
    out, _, report = demo_run
    fp32, mixed = report["training"]
    assert fp32["precision"] == "fp32" and mixed["precision"] in ("bf16", "fp16")
    for run in (fp32, mixed):
        assert run["steps"] == len(run["losses"]) == len(run["scales"]) > 0 and run["seconds"] > 0
        assert run["losses"][-1] < run["losses"][0] and run["accuracy"] > 0.8
    layers = {r["layer"]: r for r in report["layer_error"]}
    assert {"stem.0", "fc", "all layers"} <= set(layers)
    assert all(r["sqnr_db"] > 10 for r in layers.values())
    assert report["settings"]["quick"] is True and report["environment"]["torch"]
    md = (out / "report.md").read_text()
    assert "![training loss and loss scale per optimizer step](training.png)" in md
    assert f"| stem.0 | Conv2d | {layers['stem.0']['sqnr_db']:.1f} |" in md


def test_qat_and_autoquant(demo_run):
    out, _, report = demo_run
    rows = {r["variant"]: r for r in report["variants"]}
    for name in ("QAT int8", "QAT w4"):  # QAT converts to the same integer model as static PTQ
        assert "QLinearConv" in rows[name]["integer_kernels"] and rows[name]["max_abs_diff_vs_pytorch"] < 0.05
    assert rows["QAT w4"]["accuracy"] > rows["static w4"]["accuracy"]  # 4-bit per-tensor: QAT wins back accuracy
    pairs = {p["weights"]: p for p in report["qat"]["pairs"]}
    assert pairs["w4"]["qat_accuracy"] == rows["QAT w4"]["accuracy"]
    assert [r["label"] for r in report["qat"]["runs"]] == ["QAT int8", "QAT w4"]
    auto = report["autoquant"]
    assert auto["evaluations"] <= auto["max_evals"] and {"stem.0", "fc"} <= set(auto["precisions"])
    md = (out / "report.md").read_text()
    assert "## Quantization-aware training" in md and "## Automatic per-layer precision (autoquantize)" in md
    assert f"| w4 | {pairs['w4']['ptq_accuracy']:.4f} | {pairs['w4']['qat_accuracy']:.4f} |" in md


def test_fp16_training_records_the_loss_scale():
    """The fp16 path (the default on CUDA) runs on CPU too: dynamic loss scaling, one scale per optimizer step."""
    from mixq.demo import DigitsCNN, load_digits_split
    from mixq.demo.training import train_run

    data = load_digits_split()
    data = {**data, "x_train": data["x_train"][:256], "y_train": data["y_train"][:256]}
    model, run = train_run(DigitsCNN(8), data, "fp16", epochs=1, label="fp16 mixed", progress=False)
    assert run.policy == "p=f32,c=f16,o=f32" and run.device == "cpu" and not model.training
    assert len(run.scales) == len(run.losses) == 4 and all(s > 1 for s in run.scales)
    assert run.to_dict()["steps"] == 4 and run.skipped_steps == run.to_dict()["skipped_steps"]


def test_litert_rows(demo_run):
    """With the LiteRT extra (make test installs it) the demo adds .tflite rows; without it, says how to get them."""
    from mixq.export.tflite import litert_available

    out, proc, report = demo_run
    rows = {r["variant"]: r for r in report["litert"]}
    if not litert_available():
        assert rows == {} and "mixq[litert]" in (out / "report.md").read_text()
        return
    assert set(rows) == {"fp32", "static int8"}  # --quick converts two files
    int8, fp32 = rows["static int8"], rows["fp32"]
    assert int8["mode"] == "full-integer" and int8["weight_types"] == ["int8"]
    assert int8["compute_ops_on_xnnpack"] == int8["compute_ops"] > 0
    assert int8["agreement"] >= 0.99 and int8["accuracy"] >= fp32["accuracy"] - 0.02
    assert int8["size_kb"] < fp32["size_kb"] and (out / int8["file"]).exists()
    assert f"| {int8['file']} | full-integer | {int8['size_kb']:.1f} |" in proc.stdout


@pytest.mark.nightly
def test_demo_on_openvino(tmp_path):
    pytest.importorskip("openvino")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "mixq", "demo", "--quick", "--out", str(out), "--no-progress",
                           "--runtime", "openvino:f32"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["runtime"] == "openvino:f32" and "openvino" in report["environment"]
    rows = {r["variant"]: r for r in report["variants"]}
    assert all(r["agreement"] >= 0.99 for r in rows.values()), rows
    md = (out / "report.md").read_text()
    assert "Variants on OpenVINO" in md and "OpenVINO f32 b1 median (ms)" in md
