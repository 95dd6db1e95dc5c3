"""The functions that exports trace, and the specs of their inputs and outputs.

Both wrap the eager STDiT (the reference, DESIGN principle 1) and take caption lengths rather than
a mask, so that the traced graph has only tensors of fixed rank with one dynamic axis, the guidance
batch 2B:

  ExportableSTDiT  (x [2B,C,T,H,W], timestep [2B] fp32, y [2B,1,L,Cc], caption_lengths [2B] int64)
                   -> out [2B,2C,T,H,W]: the caption projection, every block's caption K/V, the
                   timestep embedding and the blocks, i.e. STDiT.forward
  ExportableBlock  (x [2B,N,C], t0 [2B,6C], caption_k, caption_v [2B,H,L,D], caption_lengths [2B])
                   -> x [2B,N,C]: one STDiTBlock, for serving stacks that run an engine per block
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models.stdit import STDiT
from .spec import BATCH_AXIS, ExportSpec, TensorSpec, dtype_name, torch_dtype


def check_eager(model: STDiT) -> None:
    if model.is_fp8:
        raise ConfigError("exports take the bf16 / fp16 model: its FP8 linears (torch._scaled_mm with per-token "
                          "scales) have no ONNX or TensorRT form here; build it without fp8")
    if model.ops.name != "eager":
        raise ConfigError(f"exports trace the eager reference; this model uses backend {model.ops.name!r}: "
                          "build it with backend='eager'")


class ExportableSTDiT(nn.Module):
    def __init__(self, model: STDiT):
        super().__init__()
        check_eager(model)
        self.model = model

    def forward(self, x, timestep, y, caption_lengths):
        temb, t0 = self.model.embed_timestep(timestep)
        return self.model.forward_embedded(x, temb, t0, self.model.caption_kv(y), caption_lengths)


class ExportableBlock(nn.Module):
    def __init__(self, model: STDiT, index: int):
        super().__init__()
        check_eager(model)
        if not 0 <= index < len(model.blocks):
            raise ConfigError(f"block {index} does not exist: the model has blocks 0 to {len(model.blocks) - 1}")
        self.block = model.blocks[index]
        self.ops = model.ops
        frames, rows, cols = model.grid
        self.grid = (frames, rows * cols)
        # Only the first block adds the temporal position embedding; it is a constant of the graph.
        self.temporal_pos = model.pos_embed_temporal if index == 0 else None

    def forward(self, x, t0, caption_k, caption_v, caption_lengths):
        temporal_pos = None if self.temporal_pos is None else self.temporal_pos.to(x.dtype)
        x, (gate, y) = self.block(x, t0, (caption_k, caption_v), caption_lengths, self.grid, self.ops, temporal_pos)
        return self.ops.gated_residual(x, gate, y)  # the residual the block leaves for the next one


def batch_range(batch: int, max_batch: int | None) -> tuple[int, int, int]:
    max_batch = max_batch or 2 * batch
    # The traced batch must be >= 2: torch.export specialises a size of 1 into the graph.
    if batch < 2 or max_batch < batch:
        raise ConfigError(f"export batch {batch} must be >= 2 and at most the maximum batch {max_batch}")
    return (1, batch, max_batch)


def stdit_spec(model: STDiT, preset: str, fmt: str, batch: int, max_batch: int | None = None,
               opset: int | None = None) -> ExportSpec:
    dtype, b = dtype_name(model.dtype), BATCH_AXIS
    return ExportSpec(
        preset=preset, kind="stdit", format=fmt,
        inputs=(TensorSpec("x", (b, model.in_channels, *model.input_size), dtype),
                TensorSpec("timestep", (b,), "float32"),
                TensorSpec("y", (b, 1, model.model_max_length, model.caption_channels), dtype),
                TensorSpec("caption_lengths", (b,), "int64")),
        outputs=(TensorSpec("out", (b, model.out_channels, *model.input_size), dtype),),
        batch_range=batch_range(batch, max_batch), dtype=dtype, device=model.pos_embed.device.type, opset=opset,
    )


def block_spec(model: STDiT, index: int, preset: str, fmt: str, batch: int, max_batch: int | None = None,
               opset: int | None = None) -> ExportSpec:
    dtype, b = dtype_name(model.dtype), BATCH_AXIS
    frames, rows, cols = model.grid
    c, heads = model.hidden_size, model.blocks[0].attn.num_heads
    tokens = TensorSpec("x", (b, frames * rows * cols, c), dtype)
    kv_shape = (b, heads, model.model_max_length, c // heads)
    return ExportSpec(
        preset=preset, kind="stdit_block", format=fmt,
        inputs=(tokens, TensorSpec("t0", (b, 6 * c), dtype), TensorSpec("caption_k", kv_shape, dtype),
                TensorSpec("caption_v", kv_shape, dtype), TensorSpec("caption_lengths", (b,), "int64")),
        outputs=(TensorSpec("out", tokens.shape, dtype),),
        batch_range=batch_range(batch, max_batch), dtype=dtype, device=model.pos_embed.device.type, opset=opset,
        block=index,
    )


def exportable(model: STDiT, spec: ExportSpec) -> nn.Module:
    """The module that `spec` describes, around `model`."""
    return ExportableSTDiT(model) if spec.kind == "stdit" else ExportableBlock(model, spec.block)


def example_inputs(spec: ExportSpec, batch: int | None = None, device: str | torch.device | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs as the spec describes them: timesteps in [0, 1000), caption lengths in [1, L]."""
    batch = batch or spec.batch_range[1]
    device = torch.device(device or spec.device)
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for t in spec.inputs:
        shape = t.concrete_shape(batch)
        if t.name == "caption_lengths":
            num_tokens = next(i for i in spec.inputs if i.name in ("y", "caption_k")).shape[2]
            value = torch.randint(1, num_tokens + 1, shape, generator=g)
        elif t.name == "timestep":
            value = torch.rand(shape, generator=g) * 1000
        else:
            value = torch.randn(shape, generator=g)
        tensors.append(value.to(device=device, dtype=torch_dtype(t.dtype)))
    return tuple(tensors)


def export_program(module: nn.Module, spec: ExportSpec) -> torch.export.ExportedProgram:
    """torch.export of `module` with the 2B axis of every input dynamic over the spec's batch range."""
    low, _, high = spec.batch_range
    batch = torch.export.Dim("batch", min=low, max=high)
    dynamic = tuple({axis: batch for axis in spec.dynamic_axes[t.name]} for t in spec.inputs)
    with torch.no_grad():
        return torch.export.export(module.eval(), example_inputs(spec), dynamic_shapes=dynamic)
