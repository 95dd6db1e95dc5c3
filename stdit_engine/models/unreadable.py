"""Why a weights file could not be read, for the CheckpointError of every loader (STDiT, T5, VAE)."""
from __future__ import annotations

import pickle

from safetensors import SafetensorError

# What torch, safetensors, transformers and diffusers raise for a weights file they cannot use.
UNREADABLE_ERRORS = (OSError, ValueError, pickle.UnpicklingError, SafetensorError)


def unreadable_reason(err: Exception) -> str:
    """Why a weights file could not be read, and what to do, for a CheckpointError message."""
    if isinstance(err, pickle.UnpicklingError):
        # torch.load(weights_only=True) refused a pickle that would run code (or is no checkpoint).
        return ("its pickled weights are not plain tensors: loading them would run code from the file, which is "
                "refused. Use a .safetensors copy of the weights, or re-save them with torch.save(state_dict)")
    if isinstance(err, SafetensorError):
        return f"a .safetensors file is damaged or truncated ({err}); download it again"
    return str(err)
