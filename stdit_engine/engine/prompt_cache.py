"""Caption embeddings of recent prompts, so that a prompt seen before skips the text encoder.

T5-XXL in fp32 is 18 GiB: unless it stays on the GPU, encoding a new prompt streams it through
the GPU, which costs more than a short sampling run. The embeddings of a prompt are a few MiB, so
the engine keeps the most recently used ones (by cleaned prompt) on the host and copies them back
exactly: a cached embedding is bitwise the one that was computed, and, as T5 encodes each prompt on
its own and in one memory layout (models/text_encoder.py), the one any batch would compute
(tests/test_text_encoder.py on the CPU, tests/test_gpu_lean.py on a GPU). Nothing the engine does
for itself (its warm-up) stores an entry, nor evicts a caller's. (The null caption of guidance is the STDiT's learned `y_embedding`, not a T5
output: it never needs encoding.)

Encoding and lookups may come from several threads: the table is guarded by a lock, and the
encoder runs outside it (two threads that miss the same prompt both encode it, and get the same).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from ..errors import ConfigError

# Each entry holds [max_length, d_model] in T5's dtype: 1.9 MiB for T5-XXL in fp32, on the host.
DEFAULT_CAPACITY = 256

Encoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


class PromptEmbeddingCache:
    """A bounded LRU table: cleaned prompt -> (embedding [1, L, C], mask [L]) on the host."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 0:
            raise ConfigError(f"the prompt-embedding cache capacity must be >= 0 (0 turns it off), got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def encode(self, prompts: Sequence[str], encoder: Encoder, device: torch.device,
               store: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(y [n, 1, L, C], mask [n, L]) of the cleaned `prompts` on `device`, as `encoder` gives
        them; `encoder` is called once, on the prompts not in the table (each once), if any, and
        what it computes enters the table if `store`."""
        found = self._lookup(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in found))
        if missing:
            y, mask = encoder(missing)
            computed = {p: (y[i].to("cpu", copy=True), mask[i].to("cpu", copy=True)) for i, p in enumerate(missing)}
            if store:
                self._store(computed)
            found.update(computed)
        rows = [found[p] for p in prompts]
        y = torch.stack([row for row, _ in rows]).to(device, non_blocking=True)
        mask = torch.stack([row_mask for _, row_mask in rows]).to(device, non_blocking=True)
        return y, mask

    def _lookup(self, prompts: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        found = {}
        with self._lock:
            for prompt in prompts:
                entry = self._entries.get(prompt)
                if entry is not None:
                    self._entries.move_to_end(prompt)
                    found[prompt] = entry
            self.hits += sum(p in found for p in prompts)
            self.misses += sum(p not in found for p in prompts)
        return found

    def _store(self, computed: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        with self._lock:
            for prompt, entry in computed.items():
                if self.capacity == 0:
                    return
                self._entries[prompt] = entry
                self._entries.move_to_end(prompt)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
