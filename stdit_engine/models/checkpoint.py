"""Loading STDiT weights: released `.pth` files (maybe wrapped in "ema", maybe with stale
`pos_embed*` keys) and `.safetensors`, with a strict key check whose errors name the keys.

Nothing here runs pickled code: `.pth` files load with `torch.load(weights_only=True)`.
`build_stdit` makes a preset's STDiT with such weights, or with random ones.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from ..configs import Preset
from ..errors import CheckpointError
from .unreadable import unreadable_reason
from .stdit import STDiT

IGNORED_KEYS = ("pos_embed", "pos_embed_temporal")  # recomputed by the model, never loaded
WRAPPER_KEYS = ("ema", "model", "state_dict", "module")
# Key prefixes that identify the other two parts of the pipeline, to say so when they are mixed up.
FOREIGN_SIGNATURES = {
    "a T5 text encoder": ("shared.weight", "encoder.block.", "encoder.final_layer_norm"),
    "a VAE (AutoencoderKL)": ("encoder.conv_in.", "decoder.conv_in.", "quant_conv.", "post_quant_conv."),
}
MAX_KEYS_SHOWN = 8


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth`/`.pt`/`.bin` or `.safetensors` file, on the CPU, unwrapped."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_folder_message(path))
    if not path.is_file():
        raise CheckpointError(f"STDiT checkpoint {path} does not exist; pass the path of a .pth or .safetensors file")
    if path.suffix == ".safetensors":
        try:
            state = load_safetensors(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"cannot read the STDiT checkpoint {path}: {unreadable_reason(err)}") from err
    else:
        try:
            # mmap: a checkpoint of several GB is paged in as it is copied to the model, not read twice.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises several types for non-checkpoint or unsafe files
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint of plain tensors ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); re-save it with torch.save(state_dict) "
                "or convert it to .safetensors"
            ) from err
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, dict):
        wrapper = next((k for k in WRAPPER_KEYS if k in state and isinstance(state[k], dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def _folder_message(path: Path) -> str:
    config = path / "config.json"
    text = config.read_text() if config.is_file() else ""
    if '"t5"' in text or "T5EncoderModel" in text:
        return f"{path} is a T5 text-encoder folder, not an STDiT checkpoint: pass it as t5=... (--t5)"
    if "AutoencoderKL" in text:
        return f"{path} is a VAE folder, not an STDiT checkpoint: pass it as vae=... (--vae)"
    return f"{path} is a folder; the STDiT checkpoint is a single .pth or .safetensors file inside such a folder"


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The state restricted to the model's keys, or a CheckpointError naming what is wrong."""
    state = {k: v for k, v in state.items() if k not in IGNORED_KEYS}
    expected = model.state_dict()
    for part, prefixes in FOREIGN_SIGNATURES.items():
        if any(k.startswith(prefixes) for k in state) and not any(k.startswith("blocks.") for k in state):
            raise CheckpointError(f"{source} holds the weights of {part}, not of STDiT; pass it as the {part.split()[1]} instead")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:MAX_KEYS_SHOWN]) + (f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match this STDiT ({'; '.join(problems)}). Check that the file is an "
            "Open-Sora v1.0 STDiT-XL/2 checkpoint and that the preset's architecture matches it"
        )
    return state


def load_stdit_checkpoint(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Loads the weights at `path` into `model` (strict) and returns it.

    A model built on the meta device takes the file's tensors as they are (no second copy).
    """
    state = check_keys(model, read_state_dict(path), str(path))
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Random initialisation from `seed` without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def build_stdit(preset: Preset, device: torch.device, dtype: torch.dtype, backend: str = "eager",
                checkpoint: str | None = None, seed: int = 0, fp8: bool = False) -> STDiT:
    """The preset's STDiT with the weights of the local file `checkpoint`, or random ones from `seed`;
    with `fp8`, its block linears then converted (STDiT.quantize_fp8)."""
    if checkpoint is None:
        with _seeded(seed, device), torch.device(device):
            model = STDiT(**preset.stdit.to_kwargs(), backend=backend).to(dtype)
    else:
        with torch.device("meta"):  # no random init of 724 M parameters that are overwritten next
            model = STDiT(**preset.stdit.to_kwargs(), backend=backend)
        model = load_stdit_checkpoint(model, checkpoint).to(device=device, dtype=dtype)
    return model.quantize_fp8() if fp8 else model
