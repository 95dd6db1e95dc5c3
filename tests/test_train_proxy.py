"""tools/train_proxy.py: a run cut by --max-seconds and rerun continues to the weights of an
uninterrupted run, its checkpoint loads as an engine of the architecture it records, and a resume
file written with other settings is refused; a second stage starts from a checkpoint's weights."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stdit_engine.quality.proxy import load_proxy_engine

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "32", "--depth", "1", "--heads", "1", "--batch-size", "2", "--steps", "3", "--log-every", "2",
        "--warmup", "2"]


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train_proxy.py"), *TINY, "--out", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_cut_run_resumes_to_the_uninterrupted_weights(tmp_path):
    straight = train(tmp_path / "straight" / "proxy.pt", "--copy-to", str(tmp_path / "copied"))
    assert straight.returncode == 0, straight.stderr
    for _ in range(2):  # --max-seconds 0: each call stops after one step (the first amid a loss-curve interval)
        cut = train(tmp_path / "cut" / "proxy.pt", "--max-seconds", "0")
        assert cut.returncode == 0 and "stopped by --max-seconds" in cut.stdout, cut.stdout + cut.stderr
    rest = train(tmp_path / "cut" / "proxy.pt")
    assert rest.returncode == 0 and "resuming at step 2" in rest.stdout, rest.stdout + rest.stderr

    a, b = (torch.load(tmp_path / name / "proxy.pt", weights_only=True) for name in ("straight", "cut"))
    assert a["architecture"] == b["architecture"] == {"hidden_size": 32, "depth": 1, "num_heads": 1}
    assert a["stdit"].keys() == b["stdit"].keys()
    assert all(torch.equal(a["stdit"][k], b["stdit"][k]) for k in a["stdit"])
    ra, rb = (torch.load(tmp_path / name / "proxy.resume.pt", weights_only=True) for name in ("straight", "cut"))
    assert ra["curve"] == rb["curve"] and [step for step, _ in ra["curve"]] == [2]
    assert all(torch.equal(ra["stdit"][k], rb["stdit"][k]) for k in ra["stdit"])
    assert sorted(p.name for p in (tmp_path / "copied").iterdir()) == [
        "proxy.optim.pt", "proxy.pt", "proxy.resume.pt", "train_proxy.json"]

    engine = load_proxy_engine(tmp_path / "cut" / "proxy.pt")
    assert engine.stdit.hidden_size == 32 and len(engine.stdit.blocks) == 1
    assert all(torch.equal(v, b["stdit"][k]) for k, v in engine.stdit.state_dict().items())

    other = train(tmp_path / "cut" / "proxy.pt", "--lr", "1e-2")
    assert other.returncode != 0 and "was written with" in other.stderr

    # A second stage starts from a checkpoint's weights (at lr 0 it keeps them) and records its command.
    stage = train(tmp_path / "stage2" / "proxy.pt", "--init-from", str(tmp_path / "cut" / "proxy.pt"), "--lr", "0")
    assert stage.returncode == 0, stage.stderr
    second = torch.load(tmp_path / "stage2" / "proxy.pt", weights_only=True)
    assert all(torch.equal(second["stdit"][k], b["stdit"][k]) for k in b["stdit"])
    assert "--init-from" in second["how"] and b["how"] in second["how"]
    wider = train(tmp_path / "wide" / "proxy.pt", "--init-from", str(tmp_path / "cut" / "proxy.pt"), "--hidden", "64")
    assert wider.returncode != 0 and "is a {'hidden_size': 32" in wider.stderr


def test_x0_weights_are_one_at_cap_one_and_the_inverse_snr_within_the_cap():
    from tools.train_proxy import x0_weights  # noqa: E402  (a script's helper)

    alpha_bar = torch.tensor([0.99, 0.5, 0.1, 0.01, 1e-4])
    assert torch.equal(x0_weights(alpha_bar, 1.0), torch.ones(5))
    inverse_snr = (1 - alpha_bar) / alpha_bar
    weights = x0_weights(alpha_bar, 1000.0)
    assert weights[0] == 1.0 and weights[1] == 1.0  # where the data shows, plain eps MSE
    assert torch.allclose(weights[2:4], inverse_snr[2:4]) and weights[4] == 1000.0
