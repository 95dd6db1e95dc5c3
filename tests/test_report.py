"""benchmarks/report.py's headline (one row per end-to-end run with the ratios to the reference) and
issue 20's lean table (one row per placement run of benchmarks/test_lean.py), each written between
its BENCHMARKS.md markers and nowhere else."""
import json
from pathlib import Path

import pytest
import report
import torch

from stdit_engine.engine.memory import GIB, estimate_memory
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


def lean_run(preset, asked, placement, t5, at_100, new_20, cached_20, reserved, allocated, first=None, chunk=18):
    """One record of benchmarks/test_lean.py's JSON, as it writes it."""
    prompts = REFERENCE_E2E[preset].prompts
    info = {"workload": f"lean table {preset}, {prompts} prompt(s)", "backend": "triton + CUDA graph",
            "dtype": "torch.float16", "placement": placement, "t5_dtype": f"torch.{t5}", "vae_chunk_frames": chunk,
            "steps_100_new": {"median_s": at_100}, "steps_20_new": {"median_s": new_20},
            "steps_20_cached": {"median_s": cached_20}, "new_prompt_extra_s": new_20 - cached_20,
            "peak_reserved_gib": reserved, "peak_allocated_gib": allocated,
            "estimated_peak_gib": 99.0, "reference_peak_reserved_gib": REFERENCE_E2E[preset].peak_reserved_gib}
    if first is not None:
        info["peak_allocated_all_calls_gib"] = max(first, allocated)
    return {"params": {"preset": preset, "placement": asked, "t5_dtype": f"UNSERIALIZABLE[torch.{t5}]"},
            "extra_info": info}


def lean_sources():
    later = {"datetime": "2026-12-02T15:13:06.33+00:00", "commit_info": {"id": "dcdb2b8aaaa"}, "benchmarks": [
        lean_run("16x512x512", "resident", "resident", "float32", 20.0, 4.5, 4.5, 24.32, 21.0, chunk=3),
        {"extra_info": {"workload": "cold start", "empty_triton_cache": {}}},  # another test's record: not a row
        lean_run("16x512x512", "auto", "lean", "float32", 21.0, 5.0, 4.6, 6.56, 3.5, first=3.2, chunk=3),
    ]}
    earlier = {"note": "Transcribed.", "datetime": "2026-12-02T13:30", "commit_info": {"id": "a6cbc5e"}, "benchmarks": [
        lean_run("16x256x256", "auto", "lean", "bfloat16", 5.1, 1.25, 1.07, 6.82, 4.0),
        lean_run("16x256x256", "auto", "lean", "float32", 5.5, 1.45, 1.09, 6.76, 4.0),
    ]}
    return [("b.json", later), ("a.json", earlier)]


def test_lean_table_rows_and_columns():
    rows = [line.split(" | ") for line in report.lean_table(lean_sources()).splitlines() if line.startswith("| 16x")]
    # The estimate of the run's configuration: its placement, fp16 STDiT, T5 dtype, decode chunk, triton kernels.
    estimate = {preset: {mode: estimate_memory(preset, 2, mode, torch.float16, torch.float32, backend="triton",
                                               vae_chunk_frames=18 if preset == "16x256x256" else 3).peak / GIB
                         for mode in ("lean", "resident")} for preset in ("16x256x256", "16x512x512")}
    # Presets in SPEC order; the default (auto, fp32 T5) first, the opt-in T5 next, resident last.
    assert [row[:2] for row in rows] == [["| 16x256x256, 2", "lean (default), T5 fp32"],
                                         ["| 16x256x256, 2", "lean, T5 bf16 (opt-in)"],
                                         ["| 16x512x512, 2", "lean (default), T5 fp32"],
                                         ["| 16x512x512, 2", "resident, T5 fp32"]]
    lean = rows[2]
    assert lean[2:6] == ["21.00 s (+5.0%)", "5.00 / 4.60 s", "0.40 s", "6.56 GiB"]  # 100 steps against resident's 20.00
    # Peak allocated over every call (the first call's 3.2 is below the warm 3.5), against this code's estimate.
    assert lean[6] == f"3.50 / {estimate['16x512x512']['lean']:.2f} GiB ({estimate['16x512x512']['lean'] / 3.5 - 1:+.1%})"
    assert lean[7:] == ["52.2 GiB", "2026-12-02 15:13 UTC, dcdb2b8 |"]
    resident = rows[3]
    assert resident[2:6] == ["20.00 s", "4.50 / 4.50 s", "0.00 s", "24.32 GiB"]  # no ratio against itself
    assert resident[6].startswith(f"21.00 / {estimate['16x512x512']['resident']:.2f} GiB")
    # No resident run of 16x256x256 in the sources: no ratio; the transcribed run says so.
    assert rows[0][2:4] == ["5.50 s", "1.45 / 1.09 s"]
    assert rows[0][8] == "2026-12-02 13:30 UTC, a6cbc5e (transcribed) |"
    assert rows[0][6] == f"4.00 / {estimate['16x256x256']['lean']:.2f} GiB ({estimate['16x256x256']['lean'] / 4 - 1:+.1%})"


def test_lean_table_takes_the_first_call_into_the_peak_allocated():
    [run] = [lean_run("16x512x512", "auto", "lean", "float32", 21.0, 5.0, 4.6, 6.56, 3.5, first=4.2, chunk=3)]
    [row] = report.lean_rows([{"datetime": "2026-12-02T15:13", "benchmarks": [run]}])
    assert row[6].startswith("4.20 / ")


def test_lean_table_replaces_only_its_block_and_names_its_sources(tmp_path):
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# B\n\n{report.HEADLINE_BEGIN}\nheadline\n{report.HEADLINE_END}\n\n{report.LEAN_BEGIN}\nold\n"
                    f"{report.LEAN_END}\n\n## Log\nkept\n")
    block = report.lean_table(lean_sources())
    report.write_block(str(page), block, report.LEAN_BEGIN, report.LEAN_END, "lean table")
    text = page.read_text()
    assert "old" not in text and "headline" in text and text.endswith("## Log\nkept\n")
    assert "`python benchmarks/report.py b.json a.json --lean-into BENCHMARKS.md`" in block
    assert "a.json: Transcribed." in block  # a table not from a run says so
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="one lean table block"):
        report.write_block(str(page), block, report.LEAN_BEGIN, report.LEAN_END, "lean table")


def test_benchmarks_md_lean_table_is_what_report_generates():
    """The committed lean table is report.py's output for the JSONs it names (regenerate it, don't edit it)."""
    root = Path(__file__).resolve().parents[1]
    page = (root / "BENCHMARKS.md").read_text()
    block = page[page.index(report.LEAN_BEGIN):page.index(report.LEAN_END) + len(report.LEAN_END)]
    sources = block.split("`python benchmarks/report.py ")[1].split(" --lean-into")[0].split()
    assert block == report.lean_table([(path, json.loads((root / path).read_text())) for path in sources])


def test_cold_start_rows_give_each_stage_first_and_warm():
    def process(first_s, warm_s):
        first = {"seconds": first_s, "stages": {"encode": 0.5, "denoise": first_s - 0.8, "decode": 0.3},
                 "peak_reserved_gib": 6.8, "triton_compile": {"calls": 30, "seconds": 12.0},
                 "graph_capture": {"calls": 1, "seconds": 0.9}, "graph_instantiate": {"calls": 1, "seconds": 0.05}}
        warm = {"seconds": warm_s, "stages": {"encode": 0.36, "denoise": warm_s - 0.56, "decode": 0.2}}
        return {"first": first, "warm": warm, "first_over_warm": first_s / warm_s, "import_s": 11.5, "load_s": 22.0}

    record = {"extra_info": {"workload": "cold start 16x256x256, 20 steps, default placement",
                             "backend": "triton + CUDA graph", "dtype": "torch.float16",
                             "empty_triton_cache": process(4.95, 1.44), "second_process": process(2.64, 1.43)}}
    first_process, second = report.rows([record])
    assert second[0].endswith(", second process")
    assert second[3] == ("first 2.64 s / warm 1.43 s (1.8x; stages first / warm: encode 0.50 / 0.36, denoise "
                         "1.84 / 0.87, decode 0.30 / 0.20 s); Triton compiling 12.0 s (summed over threads), graph "
                         "capture with its warm-up steps 0.90 s (instantiation 0.05 s)")
    assert second[4:6] == ["import 11.5 s, load 22.0 s", "- / 6.80 GiB"]


def test_cold_start_rows_give_the_loading_stages_and_what_the_warm_up_paid():
    run = {"first": {"seconds": 1.5, "stages": {"encode": 0.36, "denoise": 0.97, "decode": 0.15},
                     "peak_reserved_gib": 6.8, "triton_compile": {"calls": 0, "seconds": 0.0},
                     "graph_capture": {"calls": 0, "seconds": 0.0}},
           "warm": {"seconds": 1.46, "stages": {"encode": 0.36, "denoise": 0.95, "decode": 0.15}},
           "first_over_warm": 1.5 / 1.46, "import_s": 15.9, "load_s": 36.4,
           "load_stages": {"weights": 10.0, "placement": 22.0, "warm-up encode x2": 0.8, "warm-up denoise x2": 3.3,
                           "warm-up decode x2": 0.3},
           "load_parts": {"warm-up denoise x2": {"compile": 2.5, "capture": 0.5}}, "warmup_s": 4.4}
    record = {"extra_info": {"workload": "cold start 16x256x256, 20 steps, default placement",
                             "backend": "triton + CUDA graph", "dtype": "torch.float16",
                             "empty_triton_cache": run, "second_process": run, "empty_cache_no_warmup": run}}
    table = report.rows([record])
    assert [row[0].split(", ")[-1] for row in table] == ["empty Triton cache", "second process",
                                                         "no warm-up while loading"]
    assert table[0][4] == ("import 15.9 s, load 36.4 s (weights 10.00, placement 22.00, warm-up 4.40 s; of the "
                           "warm-up: compile 2.50, capture 0.50 s)")
