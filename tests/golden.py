"""Access to the reference implementation's test vectors in tests/golden/ (see tests/golden/README.md)."""
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def load_golden(name: str) -> dict:
    return torch.load(GOLDEN_DIR / name, weights_only=True)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - b|| / ||b||, computed in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm()).item()
