"""tools/step_cache_quality.py end to end on the CPU with a small setting (the trained proxy, two
prompts, a few steps), so the GPU run of the full sweep cannot fail for a trivial reason."""
import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

from stdit_engine.engine.cache_defaults import cache_defaults
from stdit_engine.quality.cache_sweep import BROADCASTS

TOOL = Path(__file__).parents[1] / "tools" / "step_cache_quality.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("step_cache_quality", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_writes_the_csv_and_the_table(tmp_path, capsys):
    tool = load_tool()
    step_ms = tmp_path / "step_ms.json"
    step_ms.write_text(json.dumps(dict(full=10.0, skip=0.5, record_residual=10.2, record_attention=10.5,
                                       spatial=8.0, temporal=8.5, cross=9.0)))
    out, calibration = tmp_path / "sweep.csv", tmp_path / "calibration.json"
    tool.main(["--out", str(out), "--device", "cpu", "--seeds", "0", "--prompts", "2", "--runs", "dpm-solver++:4",
               "--thresholds", "0,100", "--step-ms", str(step_ms), "--calibration-out", str(calibration)])
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(tool.COLUMNS)
    settings = [r["setting"] for r in rows]
    default = cache_defaults("dpm-solver++", 4).residual_threshold
    assert settings[:3] == ["threshold 0.0", f"threshold {default} (default)", "threshold 100.0"]
    assert settings[3] == "attention (default)" and len(settings) == 4 + len(BROADCASTS)
    never, _, always = rows[:3]
    # Threshold 0 skips nothing: the uncached run itself. 100 skips all but the first and last step.
    assert never["saved"] == "blocks skipped at 0 of 4" and math.isinf(float(never["psnr_db_mean"]))
    assert float(never["latent_rel_l2_worst"]) == 0.0 and float(never["gpu_speedup"]) == 1.0
    assert always["saved"] == "blocks skipped at 2 of 4" and float(always["forward_speedup"]) == 2.0
    # The first step stores the residual, two reuse it, the last runs in full.
    assert float(always["gpu_speedup"]) == pytest.approx(4 * 10.0 / (10.2 + 2 * 0.5 + 10.0))
    assert 0 < float(always["latent_rel_l2_mean"]) <= float(always["latent_rel_l2_worst"])
    assert float(always["psnr_db_worst"]) <= float(always["psnr_db_mean"]) < math.inf
    # The calibration's estimate of each schedule's distance: none for no skip, none for attention.
    assert float(never["estimated_rel_l2"]) == 0.0 < float(always["estimated_rel_l2"])
    assert rows[3]["estimated_rel_l2"] == ""
    assert all(r["seeds"] == "1" and r["prompts"] == "2" for r in rows)
    printed = capsys.readouterr().out
    assert "| dpm-solver++ 4 | threshold 100.0 | blocks skipped at 2 of 4 | 2.00 |" in printed

    # Again from the file the first run wrote, the residual cache alone: the same schedule, the same distances.
    again = tmp_path / "again.csv"
    tool.main(["--out", str(again), "--device", "cpu", "--seeds", "0", "--prompts", "2", "--runs", "dpm-solver++:4",
               "--thresholds", "100", "--strategies", "residual", "--calibration", str(calibration)])
    rows_again = list(csv.DictReader(again.open()))
    assert [r["setting"] for r in rows_again] == [f"threshold {default} (default)", "threshold 100.0"]
    assert {k: rows_again[1][k] for k in ("saved", "psnr_db_mean", "estimated_rel_l2")} == \
        {k: always[k] for k in ("saved", "psnr_db_mean", "estimated_rel_l2")}
