"""Where the three models live during each stage of `generate()` (DESIGN principle 4).

Modes:
  resident    everything on the GPU all the time: fastest, when memory is plentiful
  lean        the STDiT stays on the GPU across calls (so its captured CUDA graphs stay valid);
              T5 is streamed through the GPU one encoder block at a time, the next block copied
              on a side stream while the current one computes; the VAE comes in for the decode
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
from ..options import PLACEMENT_MODES as MODES

# What placement="auto" tries, best first: lean holds every preset's default run within a small
# GPU's memory (memory.LEAN_RESERVED_BYTES) at nearly resident speed; sequential needs the least.
AUTO_ORDER = ("lean", "sequential")
# The stages whose model stays on the device between calls, per mode.
KEPT_STAGES = {"resident": {"encode", "denoise", "decode"}, "lean": {"denoise"}, "offload": set(),
               "sequential": set()}
# The stages around which the allocator's cached blocks go back to the device, per mode, so that
# no stage's peak stacks on blocks another stage left. Lean keeps the decode's (and the denoise's
# few) cached between calls: a call whose prompts are cached then allocates nothing new, where
# allocating afresh every call slowed its decode (BENCHMARKS.md); around the encode, which streams T5 only
# for new prompts, they go back, so T5's blocks stack on nothing and leave nothing to the decode.
EMPTIED_AROUND = {"resident": set(), "lean": {"encode"}, "offload": {"encode", "denoise", "decode"},
                  "sequential": {"encode", "denoise", "decode"}}
# Modes that stream a stage's blocks (Placement's `streamed`), and whether the next block is prefetched.
STREAMING_PREFETCH = {"lean": True, "sequential": False}


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
                        self.host[id(tensor)] = _host_copy(tensor.detach(), pin)
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

    def placed(self) -> list[torch.Tensor]:
        """The module's tensors where they are now."""
        return [table[name] for table, name, _ in self.owners]


def _host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    """`tensor` on the host (itself, if it is there and need not be pinned). Pinned, it is copied
    straight into pinned memory: no pageable copy on the way, which would cost a second host copy
    of each model (T5-XXL's is 18 GiB in fp32) and a staged, slower copy from the device."""
    if not pin:
        return tensor.to("cpu")
    return torch.empty_like(tensor, device="cpu", pin_memory=True).copy_(tensor)


class BlockStream:
    """Streams the blocks of a ModuleList through `device` in forward order: a block's weights come
    in right before its forward and leave right after it.

    With `prefetch` (CUDA only), block i+1 is copied on a side stream while block i computes, so
    the copy engine never waits for the compute; two blocks are then on the device instead of
    one. Before asking for block i+1's memory the host waits until block i-1 has finished: the
    allocator can reuse its memory only then (it was handed to the compute stream), and without
    that wait the host would run ahead and bring in every block at once.
    """

    def __init__(self, blocks: nn.ModuleList, device: torch.device, prefetch: bool = False):
        self.copies = [HostCopy(block, device) for block in blocks]
        self.prefetch = prefetch and device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.prefetch else None
        self.arrived: dict[int, torch.cuda.Event] = {}  # block index -> its copy has completed
        self.finished: dict[int, torch.cuda.Event] = {}  # block index -> its forward has completed
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda module, args, index=index: self._enter(index))
            block.register_forward_hook(lambda module, args, output, index=index: self._leave(index))

    def _fetch(self, index: int) -> None:
        with torch.cuda.stream(self.copy_stream):
            self.copies[index].to_device()
            self.arrived[index] = torch.cuda.Event()
            self.arrived[index].record(self.copy_stream)

    def _enter(self, index: int) -> None:
        if not self.prefetch:
            self.copies[index].to_device()
            return
        if index == 0:  # a new pass: nothing of an earlier (perhaps interrupted) one is in flight for it
            self.arrived.clear()
            self.finished.clear()
        if index not in self.arrived:
            self._fetch(index)
        torch.cuda.current_stream().wait_event(self.arrived.pop(index))
        if index + 1 < len(self.copies):
            previous = self.finished.pop(index - 1, None)
            if previous is not None:
                previous.synchronize()
            self._fetch(index + 1)

    def _leave(self, index: int) -> None:
        if self.prefetch:
            compute = torch.cuda.current_stream()
            for tensor in self.copies[index].placed():
                tensor.record_stream(compute)  # allocated on the copy stream, read by the compute stream
            self.finished[index] = torch.cuda.Event()
            self.finished[index].record(compute)
        self.copies[index].to_host()


class Placement:
    """Puts each model on the device for its stage, as `mode` says.

    `models` maps a stage name ("encode", "denoise", "decode") to the nn.Module it runs.
    `streamed` optionally maps a stage to the ModuleList to stream block by block in "lean" and
    "sequential".
    """

    def __init__(self, mode: str, device: torch.device, models: dict[str, nn.Module],
                 streamed: dict[str, nn.ModuleList] | None = None):
        if mode not in MODES:
            raise ConfigError(f"unknown placement {mode!r}; choose one of: auto, {', '.join(MODES)}")
        self.mode, self.device = mode, device
        self.reason = "as constructed"  # why this mode: one line (engine/placement_choice.py)
        self.copies: dict[str, HostCopy] = {}
        streamed = streamed if mode in STREAMING_PREFETCH else {}
        for stage, module in models.items():
            blocks = streamed.get(stage)
            if stage in KEPT_STAGES[mode]:
                module.to(device)
            elif blocks is not None:
                BlockStream(blocks, device, prefetch=STREAMING_PREFETCH[mode])  # lives on in the blocks' hooks
                # The rest of the model (embeddings, final norm) moves as one piece.
                self.copies[stage] = HostCopy(module, device, skip=blocks)
            else:
                self.copies[stage] = HostCopy(module, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def keeps(self, stage: str) -> bool:
        """Whether the stage's model stays on the device between calls (so graphs of it stay valid)."""
        return stage in KEPT_STAGES[self.mode]

    @contextmanager
    def stage(self, name: str):
        empties = self.device.type == "cuda" and name in EMPTIED_AROUND[self.mode]
        if empties:
            torch.cuda.empty_cache()
        copy = self.copies.get(name)
        if copy is not None:
            copy.to_device()
        try:
            yield
        finally:
            if copy is not None:
                copy.to_host()
            if empties:
                torch.cuda.empty_cache()
