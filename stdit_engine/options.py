"""The names that the engine's options take, torch-free: the command line lists and checks them
(`--help`, argument errors) without importing torch."""
from .errors import ConfigError

PLACEMENT_MODES = ("resident", "lean", "offload", "sequential")  # engine/placement.py
PARALLEL_MODES = ("auto", "none", "cfg", "dsp", "cfg+dsp")  # parallel/plan.py
CACHE_MODES = ("residual", "attention")  # engine/step_cache.py
KERNEL_BACKENDS = ("eager", "sdpa", "triton")  # kernels/registry.py BACKENDS, in this order
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}  # command-line name -> torch attribute


def parse_sampler_run(text: str) -> tuple[str, int]:
    """"iddpm:100" -> ("iddpm", 100): a sampler and its step count, as calibrate-cache's --run and the
    calibration's curves name them (a sampler's own options come before its steps: "ddim:eta=1:50")."""
    sampler, _, steps = text.rpartition(":")
    if not (sampler and steps.isdigit()):
        raise ConfigError(f"a run is SAMPLER:STEPS, e.g. iddpm:100, got {text!r}")
    return sampler, int(steps)


def torch_dtype(name: str):
    """The torch dtype of a command-line name ("fp16", "bf16", "fp32")."""
    import torch

    return getattr(torch, DTYPES[name])
