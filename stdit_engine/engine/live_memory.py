"""Peak bytes of live tensor storages on one device, for devices without an allocator that counts.

CUDA's caching allocator keeps this figure itself (`max_memory_allocated`). On the CPU the process's
resident set mixes in the interpreter, the libraries and pages the allocator keeps after a free,
and it never goes down, so it cannot tell one stage's tensors from another's. `LiveTensorPeak` is a
dispatch mode: it sees every tensor an aten op returns, counts its storage once (views and in-place
results share their base's storage) until the storage is freed (a weakref finalizer on it), and
keeps the maximum of the running total. Scratch memory an op allocates and frees inside itself is
invisible to it, as are tensors created before entry unless they are passed as `present`.

The mode sees the ops of its own thread only, but a storage's finalizer runs on whichever thread
frees it (another call dropping a shared tensor), so the counts are changed under a lock.
"""
from __future__ import annotations

import threading
import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _on_device(storage: torch.UntypedStorage, device: torch.device) -> bool:
    """`device` without an index (e.g. "cuda") stands for all devices of its type."""
    return storage.device.type == device.type and device.index in (None, storage.device.index)


class LiveTensorPeak(TorchDispatchMode):
    """Within `with LiveTensorPeak(device, present) as live:`, `live.peak` is the most bytes of
    tensor storages on `device` alive at once, counting the storages of the `present` tensors (the
    weights already loaded) from the start; `live.current` is the running total."""

    def __init__(self, device: torch.device | str, present: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.device = torch.device(device)
        # Storages are keyed by their Python object, which PyTorch keeps (one per storage) for as
        # long as the storage lives, so its id is unique until the finalizer below has run.
        self._bytes: dict[int, int] = {}
        self._finalizers: dict[int, weakref.finalize] = {}
        # Re-entrant: a garbage collection inside a locked section may run a finalizer on this thread.
        self._lock = threading.RLock()
        self.current = 0
        self.peak = 0
        for tensor in present:
            self._track(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out

    def __exit__(self, *exc):
        # Storages that outlive the measurement no longer report to it.
        with self._lock:
            for finalizer in list(self._finalizers.values()):
                finalizer.detach()
            self._finalizers.clear()
        return super().__exit__(*exc)

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        if not _on_device(storage, self.device):
            return
        key = id(storage)
        with self._lock:
            if key not in self._bytes:
                self._bytes[key] = 0
                self._finalizers[key] = weakref.finalize(storage, self._release, key)
            # Also for a storage seen before: an out= or resize_ op may have grown it.
            self.current += storage.nbytes() - self._bytes[key]
            self._bytes[key] = storage.nbytes()
            self.peak = max(self.peak, self.current)

    def _release(self, key: int) -> None:
        with self._lock:
            self.current -= self._bytes.pop(key)
            self._finalizers.pop(key, None)  # gone already if the measurement ended meanwhile
