"""Runs the Triton kernels under Triton's interpreter (on CPU tensors) where there is no GPU. (The
helper modules, golden.py and the like, import by name: pyproject.toml puts tests/ on pytest's
pythonpath.)"""
import os

import torch

# Read when @triton.jit decorates a kernel, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
