"""Why a weights file could not be read, for the CheckpointError of every loader (STDiT, T5, VAE)."""
from __future__ import annotations

import pickle

from safetensors import SafetensorError

def unreadable_reason(err: Exception) -> str:
    """Why a weights file could not be read, and what to do, for a CheckpointError message.

    The loaders (torch, safetensors, transformers, diffusers) raise many types for a file they
    cannot use (a truncated pickle gives struct.error): callers wrap any Exception of a load."""
    if isinstance(err, pickle.UnpicklingError):
        # torch.load(weights_only=True) refused a pickle that would run code (or is no checkpoint).
        return ("its pickled weights are not plain tensors: loading them would run code from the file, which is "
                "refused. Use a .safetensors copy of the weights, or re-save them with torch.save(state_dict)")
    if isinstance(err, SafetensorError):
        return f"a .safetensors file is damaged or truncated ({err}); download it again"
    if isinstance(err, (OSError, ValueError)):  # their messages already name the file and the problem
        return str(err)
    return f"{type(err).__name__}: {err}"
