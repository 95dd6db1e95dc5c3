"""The names that the engine's options take, torch-free: the command line lists and checks them
(`--help`, argument errors) without importing torch."""

PLACEMENT_MODES = ("resident", "lean", "offload", "sequential")  # engine/placement.py
PARALLEL_MODES = ("auto", "none", "cfg", "dsp", "cfg+dsp")  # parallel/plan.py
CACHE_MODES = ("residual", "attention")  # engine/step_cache.py
KERNEL_BACKENDS = ("eager", "sdpa", "triton")  # kernels/registry.py BACKENDS, in this order
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}  # command-line name -> torch attribute


def torch_dtype(name: str):
    """The torch dtype of a command-line name ("fp16", "bf16", "fp32")."""
    import torch

    return getattr(torch, DTYPES[name])
