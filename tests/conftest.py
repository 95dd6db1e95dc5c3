"""Lets tests import their helper modules (golden, helpers_hf) by name, and run the Triton kernels
under Triton's interpreter (on CPU tensors) where there is no GPU."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

# Read when @triton.jit decorates a kernel, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
