"""ONNX export of the STDiT forward (or of one block), and its check against PyTorch with ONNX Runtime.

The graph comes from torch.export (the same ExportedProgram as the AOTInductor path) translated by
PyTorch's torch.export-based ONNX exporter, which needs onnxscript. The legacy TorchScript exporter
is not used: it cannot trace `F.layer_norm(x, (x.shape[-1],))` of the eager kernels with a dynamic
batch, and it is deprecated. Weights go to an external-data file (`model.onnx.data`) when the model
passes the 2 GB protobuf limit.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import ConfigError
from ..files import atomic_folder_outputs
from ..models.stdit import STDiT
from ..quality.metrics import relative_l2
from .exportable import block_spec, example_inputs, export_program, exportable, stdit_spec
from .spec import BATCH_AXIS, ExportSpec, spec_path

OPSET = 18  # >= 17 for LayerNormalization; 18 is the exporter's native opset (no version conversion)


def require_packages(*names: str) -> None:
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'stdit-engine[export]'")


def export_onnx(model: STDiT, path: str | Path, preset: str, batch: int = 4, max_batch: int | None = None,
                block: int | None = None, external_data: bool | None = None) -> ExportSpec:
    """Writes `path` (+ `path`.data) and its spec `path`.json, each whole or not at all; returns the spec.

    `block`: export that one STDiTBlock instead of the full forward. `external_data`: weights in
    `path`.data (None: only when the model passes the 2 GB protobuf limit).
    """
    require_packages("onnx", "onnxscript")
    path = Path(path)
    spec = (stdit_spec(model, preset, "onnx", batch, max_batch, OPSET) if block is None
            else block_spec(model, block, preset, "onnx", batch, max_batch, OPSET))
    program = torch.onnx.export(export_program(exportable(model, spec), spec), input_names=[t.name for t in spec.inputs],
                                output_names=[t.name for t in spec.outputs], opset_version=OPSET, dynamo=True,
                                verbose=False)
    name_batch_axis(program.model, spec)
    with atomic_folder_outputs(path) as staged:  # the .data file's name is recorded in the model
        program.save(str(staged), external_data=external_data)
        spec.save(spec_path(staged))
    return spec


def name_batch_axis(model, spec: ExportSpec) -> None:
    """Renames the symbol torch.export gave the batch to `2B`, in every value of the onnx_ir model."""
    import onnx_ir as ir

    first = model.graph.inputs[0].shape[spec.dynamic_axes[spec.inputs[0].name][0]]
    symbol = first.value
    for node_values in (model.graph.inputs, model.graph.outputs,
                        (v for node in model.graph.all_nodes() for v in node.outputs)):
        for value in node_values:
            if value.shape is not None and any(isinstance(d, ir.SymbolicDim) and d.value == symbol for d in value.shape):
                value.shape = ir.Shape([BATCH_AXIS if isinstance(d, ir.SymbolicDim) and d.value == symbol else d
                                        for d in value.shape])


def run_onnx(path: str | Path, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Runs the ONNX file on the CPU with ONNX Runtime; inputs in the order of its spec."""
    require_packages("onnxruntime")
    import onnxruntime

    spec = ExportSpec.load(spec_path(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {t.name: value.detach().cpu().numpy() for t, value in zip(spec.inputs, inputs)}
    return [torch.from_numpy(out) for out in session.run([t.name for t in spec.outputs], feeds)]


def validate_onnx(model: STDiT, path: str | Path, batch: int | None = None, seed: int = 0) -> float:
    """Relative error of ONNX Runtime (CPU) against the eager model on random inputs built from the spec."""
    spec = ExportSpec.load(spec_path(path))
    inputs = example_inputs(spec, batch, device="cpu", seed=seed)
    with torch.no_grad():
        expected = exportable(model, spec)(*(t.to(model.pos_embed.device) for t in inputs)).float().cpu()
    actual = run_onnx(path, inputs)[0].float()
    return relative_l2(actual, expected)
