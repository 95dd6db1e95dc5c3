"""ExportSpec: what an exported artifact computes, written as JSON next to it.

Serving code reads it to bind inputs by name (and the TensorRT builder to choose its optimisation
profile); validation reads it to build inputs of the right shapes and dtypes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from ..files import write_text_atomic

BATCH_AXIS = "2B"  # the guidance batch: a conditional and an unconditional row per prompt

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64"}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES[dtype]


def torch_dtype(name: str) -> torch.dtype:
    return {v: k for k, v in DTYPE_NAMES.items()}[name]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a dynamic axis, named as in ExportSpec.batch_range
    dtype: str

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class ExportSpec:
    preset: str
    kind: str  # "stdit" (the full forward) or "stdit_block"
    format: str  # "onnx" or "aoti"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_range: tuple[int, int, int]  # (min, opt, max) of the 2B axis; opt is the traced batch
    dtype: str  # the model's compute dtype
    device: str  # where the artifact runs (AOTInductor packages are compiled for one device type)
    opset: int | None = None  # ONNX only
    block: int | None = None  # the block index of a "stdit_block" export
    torch_version: str = field(default_factory=lambda: torch.__version__)

    @property
    def dynamic_axes(self) -> dict[str, list[int]]:
        """Per tensor name, the indices of its dynamic axes (the `dynamic_axes` of ONNX exports)."""
        return {t.name: [i for i, d in enumerate(t.shape) if isinstance(d, str)]
                for t in (*self.inputs, *self.outputs)}

    def check_batch(self, batch: int) -> None:
        low, _, high = self.batch_range
        if not low <= batch <= high:
            raise ConfigError(f"this {self.format} artifact of {self.preset} takes a batch of {low} to {high} "
                              f"({BATCH_AXIS} axis), got {batch}: export it again with a larger --max-batch")

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ExportSpec":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"export spec {path} does not exist: it is written next to the artifact by "
                              "`stdit-engine export`; keep the two together")
        data = json.loads(path.read_text())
        # JSON has no tuples: rebuild them, so that a loaded spec equals the saved one.
        tensors = lambda items: tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in items)
        return cls(**{**data, "inputs": tensors(data["inputs"]), "outputs": tensors(data["outputs"]),
                      "batch_range": tuple(data["batch_range"])})


def spec_path(artifact: str | Path) -> Path:
    """model.onnx -> model.onnx.json."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")
