"""Access to the reference implementation's test vectors in tests/golden/ (see tests/golden/README.md)."""
from pathlib import Path

import torch

from stdit_engine.quality.metrics import relative_l2 as rel_error  # noqa: F401  (the tests' name for it)

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def load_golden(name: str) -> dict:
    return torch.load(GOLDEN_DIR / name, weights_only=True)
