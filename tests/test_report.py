"""benchmarks/report.py's headline: one row per end-to-end run with the ratios to the reference,
written between BENCHMARKS.md's markers and nowhere else."""
import json
from pathlib import Path

import pytest
import report

from stdit_engine.reference import REFERENCE_E2E

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def end_to_end(preset, placement, dtype, sampling_s, reserved_gib, fp8=False):
    reference = REFERENCE_E2E[preset]
    return {"extra_info": {
        "workload": f"end to end {preset}, {reference.prompts} prompt(s), 100 steps", "dtype": f"torch.{dtype}"
        + (", FP8 block linears" if fp8 else ""), "backend": "triton + CUDA graph",
        "placement": f"{placement}, T5 float32", "sampling_s": sampling_s, "total_s": sampling_s + 0.5,
        "peak_reserved_gib": reserved_gib, "reference_sampling_s": reference.sampling_s,
        "reference_peak_reserved_gib": reference.peak_reserved_gib, "gpu": "NVIDIA H200", "torch": "2.11.0",
        "triton": "3.6.0"}}


def test_headline_rows_and_ratios():
    data = {"datetime": "2026-12-01T10:00:00", "benchmarks": [
        end_to_end("64x512x512", "sequential", "bfloat16", 38.55, 6.72, fp8=True),
        end_to_end("16x256x256", "sequential", "float16", 6.7, 2.82),
        end_to_end("16x256x256", "resident", "float16", 3.35, 28.2),
        {"extra_info": {"workload": "STDiT forward", "median_ms": 40.0}},  # not an end-to-end run
    ]}
    rows = [line for line in report.headline(data, "bench.json").splitlines() if line.startswith("| 16x") or
            line.startswith("| 64x")]
    assert [row.split(" | ")[1] for row in rows] == ["resident, fp16", "sequential, fp16", "sequential, bf16 + FP8"]
    resident = rows[0].split(" | ")
    assert resident[2:6] == ["3.35 / 3.85 s", "28.20 GiB", "4.00x (13.4 s)", "1.00x (28.2 GiB)"]
    assert rows[2].split(" | ")[4:6] == ["2.00x (77.1 s)", "0.10x (67.2 GiB)"]
    assert "2026-12-01" in rows[0]


def test_headline_replaces_only_the_marked_block(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# Benchmarks\n\n{report.HEADLINE_BEGIN}\nold table\n{report.HEADLINE_END}\n\n## Log\nkept\n")
    data = json.loads((RESULTS / "transcribed-2026-11-29.json").read_text())
    report.write_headline(str(page), report.headline(data, "results.json"))
    text = page.read_text()
    assert "old table" not in text and text.endswith("## Log\nkept\n") and text.count(report.HEADLINE_BEGIN) == 1
    assert "Transcribed by hand" in text  # a table not from a run says so
    page.write_text("# Benchmarks without markers\n")
    with pytest.raises(SystemExit, match="one headline block"):
        report.write_headline(str(page), "table")


def test_benchmarks_md_headline_is_what_report_generates():
    """The committed headline is report.py's output for the JSON it names (regenerate it, don't edit it)."""
    page = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text()
    block = page[page.index(report.HEADLINE_BEGIN):page.index(report.HEADLINE_END) + len(report.HEADLINE_END)]
    source = block.split("`python benchmarks/report.py ")[1].split(" ")[0]
    data = json.loads((Path(__file__).resolve().parents[1] / source).read_text())
    assert block == report.headline(data, source)
