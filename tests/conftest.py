"""Lets tests import their helper modules (golden, helpers_hf) by name."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
