"""Runs the Triton kernels under Triton's interpreter (on CPU tensors) where there is no GPU. (The
helper modules, golden.py and the like, import by name: pyproject.toml puts tests/ on pytest's
pythonpath.)"""
import os

# The tests read tqdm's default output (TQDM_DISABLE=1 would silence it; tqdm reads it on import,
# which importing torch does), and their clients talk to servers on 127.0.0.1 only, which a proxy
# named in the environment would stand between.
for name in [name for name in os.environ if name.startswith("TQDM_") or name.lower().endswith("_proxy")]:
    del os.environ[name]

import pytest  # noqa: E402 - after the environment is cleaned
import torch  # noqa: E402

# Read when @triton.jit decorates a kernel, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def no_model_loads(monkeypatch):
    """For tests of arguments the command line must refuse before it builds an engine."""
    from stdit_engine import Engine

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(Engine, "from_random_weights", refuse)
    monkeypatch.setattr(Engine, "from_pretrained", refuse)
