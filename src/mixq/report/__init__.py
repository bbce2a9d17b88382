"""Measuring and reporting: ONNX Runtime latency, report documents (Markdown, HTML, JSON), plots, atomic files."""

from mixq.report.document import Code, Image, Section, Table, Text, render_html, render_markdown
from mixq.report.files import StagedOutputs, Terminated, atomic_path, atomic_write_text
from mixq.report.latency import Latency, measure_interleaved, measure_latency, ort_session, random_feeds
from mixq.report.writer import write_report

__all__ = [
    "Code", "Image", "Latency", "Section", "StagedOutputs", "Table", "Terminated", "Text", "atomic_path",
    "atomic_write_text", "measure_interleaved", "measure_latency", "ort_session", "random_feeds", "render_html",
    "render_markdown", "write_report",
]
