"""The denoiser's captured steps, at most `capacity` of them, the least recently used dropped first.

Each captured step holds its own memory pool (one step's activations at its batch size) and its
static buffers, so a server whose clients ask for many distinct shapes must not keep them all.
The cfg scale and the number of steps are graph inputs, not part of the key (engine/denoise.py):
what varies the key is the batch shape, dtype, guided channels and kind of sampler.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

import torch

Captured = TypeVar("Captured")

MAX_CACHED_GRAPHS = 4


class GraphCache:
    def __init__(self, capacity: int = MAX_CACHED_GRAPHS):
        if capacity < 1:
            raise ValueError(f"a graph cache holds at least one graph, got capacity {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable, capture: Callable[[], Captured]) -> Captured:
        """The entry for `key`, captured by `capture()` on a miss (after making room, so that the
        dropped graphs' memory is back before the new one allocates its own)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        if len(self._entries) >= self.capacity:
            while len(self._entries) >= self.capacity:
                self._entries.popitem(last=False)
            _release_cached_memory()
        entry = self._entries[key] = capture()
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


def _release_cached_memory() -> None:
    """A dropped graph's pool stays reserved by the allocator until its cache is emptied."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
