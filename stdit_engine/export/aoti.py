"""AOTInductor packages of the STDiT forward: torch.export, then
`torch._inductor.aoti_compile_and_package` into one `.pt2` file that Python
(`torch._inductor.aoti_load_package`) and C++ (`torch::inductor::AOTIModelPackageLoader`, csrc/) load
without the model's Python code. A package runs on the device type it was compiled for (the model's).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import ConfigError
from ..files import atomic_path
from ..models.stdit import STDiT
from ..quality.metrics import relative_l2
from .exportable import block_spec, example_inputs, export_program, exportable, stdit_spec
from .spec import ExportSpec, spec_path


def export_aoti(model: STDiT, path: str | Path, preset: str, batch: int = 4, max_batch: int | None = None,
                block: int | None = None, verbose: bool = False) -> ExportSpec:
    """Compiles the forward (or one block) of `model` into the package `path` (.pt2) and writes its
    spec, each whole or not at all."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ConfigError(f"an AOTInductor package is a .pt2 file; got {path}")
    spec = (stdit_spec(model, preset, "aoti", batch, max_batch) if block is None
            else block_spec(model, block, preset, "aoti", batch, max_batch))
    start = time.perf_counter()
    program = export_program(exportable(model, spec), spec)
    exported = time.perf_counter()
    with atomic_path(path) as partial:
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
    if verbose:
        print(f"torch.export {exported - start:.1f} s, AOTInductor compile {time.perf_counter() - exported:.1f} s")
    spec.save(spec_path(path))
    return spec


def load_aoti(path: str | Path):
    """(runner, spec): runner(*inputs) -> output, inputs in the spec's order, on the spec's device."""
    path = Path(path)
    spec = ExportSpec.load(spec_path(path))
    if spec.format != "aoti":
        raise ConfigError(f"{path} is described as a {spec.format} export, not an AOTInductor package")
    package = torch._inductor.aoti_load_package(str(path))

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        spec.check_batch(inputs[0].shape[0])
        outputs = package(*inputs)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs

    return run, spec


def validate_aoti(model: STDiT, path: str | Path, batch: int | None = None, seed: int = 0) -> float:
    """Relative error of the package against the eager model on random inputs built from its spec."""
    run, spec = load_aoti(path)
    inputs = example_inputs(spec, batch, seed=seed)
    with torch.no_grad():
        expected = exportable(model, spec)(*inputs)
        return relative_l2(run(*inputs).float(), expected.float())
