"""Where the three models live during each stage of `generate()` (DESIGN principle 4).

Modes:
  resident    everything on the GPU all the time: fastest, when memory is plentiful
  offload     each model's weights live in pinned host memory and are copied to the GPU for its
              stage only (T5 for encode, STDiT for denoise, VAE for decode)
  sequential  as offload, and T5 (the largest part: 4.7B parameters) is streamed through the GPU one
              encoder block at a time
Weights never change during inference, so "moving back" to the host is free: the parameters are
pointed at their pinned host copies again and the GPU copies are released.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError

MODES = ("resident", "offload", "sequential")


class HostCopy:
    """Keeps a pinned host copy of a module's tensors and swaps the module between it and `device`.

    Tensors are swapped by replacing them in their owners' `_parameters` / `_buffers` (not through
    `.data`, which cannot change a tensor's device type), and a tensor shared by several owners
    (T5's tied embedding) gets one copy. Submodules in `skip` are left to someone else.
    """

    def __init__(self, module: nn.Module, device: torch.device, skip: nn.Module | None = None):
        self.device = device
        skipped = {id(m) for m in skip.modules()} if skip is not None else set()
        pin = device.type == "cuda"
        self.owners: list[tuple[dict, str, int]] = []  # (owner's _parameters or _buffers, name, tensor id)
        self.host: dict[int, torch.Tensor] = {}
        for owner in module.modules():
            if id(owner) in skipped:
                continue
            for table in (owner._parameters, owner._buffers):
                for name, tensor in table.items():
                    if tensor is None:
                        continue
                    if id(tensor) not in self.host:
                        host = tensor.detach().to("cpu")
                        self.host[id(tensor)] = host.pin_memory() if pin else host
                    self.owners.append((table, name, id(tensor)))
        self.to_host()

    def _place(self, make) -> None:
        placed = {key: make(host) for key, host in self.host.items()}
        for table, name, key in self.owners:
            tensor = placed[key]
            table[name] = nn.Parameter(tensor, requires_grad=False) if isinstance(table[name], nn.Parameter) else tensor

    def to_device(self) -> None:
        self._place(lambda host: host.to(self.device, non_blocking=True))

    def to_host(self) -> None:
        self._place(lambda host: host)


def stream_blocks(blocks: nn.ModuleList, device: torch.device) -> None:
    """Each block's weights come to `device` right before its forward and leave right after."""
    for block in blocks:
        copy = HostCopy(block, device)
        block.register_forward_pre_hook(lambda module, args, copy=copy: copy.to_device())
        block.register_forward_hook(lambda module, args, output, copy=copy: copy.to_host())


class Placement:
    """Puts each model on the device for its stage, as `mode` says.

    `models` maps a stage name ("encode", "denoise", "decode") to the nn.Module it runs.
    `streamed` optionally maps a stage to the ModuleList to stream block by block in "sequential".
    """

    def __init__(self, mode: str, device: torch.device, models: dict[str, nn.Module],
                 streamed: dict[str, nn.ModuleList] | None = None):
        if mode not in MODES:
            raise ConfigError(f"unknown placement {mode!r}; choose one of: auto, {', '.join(MODES)}")
        self.mode, self.device = mode, device
        self.copies: dict[str, HostCopy] = {}
        if mode == "resident":
            for module in models.values():
                module.to(device)
            return
        streamed = streamed if mode == "sequential" else {}
        for stage, module in models.items():
            blocks = streamed.get(stage)
            if blocks is not None:
                stream_blocks(blocks, device)
                # The rest of the model (embeddings, final norm) moves as one piece.
                self.copies[stage] = HostCopy(module, device, skip=blocks)
            else:
                self.copies[stage] = HostCopy(module, device)
        torch.cuda.empty_cache()

    @contextmanager
    def stage(self, name: str):
        copy = self.copies.get(name)
        if copy is not None:
            copy.to_device()
        try:
            yield
        finally:
            if copy is not None:
                copy.to_host()
                # Return the stage's cached blocks, so the next stage's peak is its own alone.
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
