"""TensorRT engines built from the ONNX export (experimental: TensorRT cannot be installed on our CI
machines, so only what it consumes, the ONNX file, its spec and the cache key, is tested there).

build_engine: parses the ONNX with the TensorRT Python builder API, one optimisation profile over the
spec's batch range (min, opt, max of the 2B axis), fp16/bf16 kernels as the export's dtype says, and
caches the serialized engine under a key of everything that makes it valid (cache_key).
load_engine: a runner that binds torch tensors by address (`set_tensor_address`) and runs on the
current CUDA stream (`execute_async_v3`); ArtifactSTDiT drives it as the `tensorrt` STDiT backend.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from ..errors import ConfigError, DeviceError
from ..files import atomic_path
from .spec import ExportSpec, spec_path, torch_dtype

BUILDER_FLAGS = {"float16": "FP16", "bfloat16": "BF16", "float32": None}


def profile_shapes(spec: ExportSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Per input, the (min, opt, max) shapes of the optimisation profile: the spec's batch range."""
    return {t.name: tuple(t.concrete_shape(batch) for batch in spec.batch_range) for t in spec.inputs}


def file_digest(path: Path) -> str:
    """sha256 of the ONNX file and its external data (the weights are part of what is built)."""
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + ".data")):
        if part.is_file():
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def cache_key(spec: ExportSpec, onnx_digest: str, tensorrt_version: str, compute_capability: tuple[int, int]) -> str:
    """An engine is valid only for this ONNX (digest), shape profile, opset, precision, TensorRT version
    and GPU compute capability; the key changes when any of them does."""
    if spec.format != "onnx":
        raise ConfigError(f"TensorRT engines are built from ONNX exports; this spec is of a {spec.format} export")
    fields = {
        "onnx": onnx_digest, "profile": profile_shapes(spec), "opset": spec.opset, "precision": spec.dtype,
        "tensorrt": tensorrt_version, "sm": f"{compute_capability[0]}{compute_capability[1]}",
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"{spec.preset}-{spec.kind}-{spec.dtype}-trt{tensorrt_version}-sm{fields['sm']}-{digest}"


def _tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise ConfigError("TensorRT engines need the tensorrt package (pip install tensorrt, on a CUDA machine)") from None
    if not torch.cuda.is_available():
        raise DeviceError("TensorRT engines run on CUDA GPUs and none is visible")
    return tensorrt


def build_engine(onnx_path: str | Path, cache_dir: str | Path, workspace_gib: float = 8.0) -> Path:
    """The engine file of `onnx_path` in `cache_dir` (built on a cache miss), with its spec beside it."""
    trt = _tensorrt()
    onnx_path = Path(onnx_path)
    spec = ExportSpec.load(spec_path(onnx_path))
    key = cache_key(spec, file_digest(onnx_path), trt.__version__, torch.cuda.get_device_capability())
    engine_path = Path(cache_dir) / f"{key}.engine"
    if engine_path.is_file() and spec_path(engine_path).is_file():
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if BUILDER_FLAGS[spec.dtype]:
        config.set_flag(getattr(trt.BuilderFlag, BUILDER_FLAGS[spec.dtype]))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(spec).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConfigError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(engine_path) as partial:
        partial.write_bytes(bytes(serialized))
    dataclasses.replace(spec, format="tensorrt", device="cuda").save(spec_path(engine_path))
    return engine_path


def load_engine(path: str | Path):
    """(runner, spec): runner(*inputs) -> output for CUDA tensors in the spec's order."""
    trt = _tensorrt()
    path = Path(path)
    spec = ExportSpec.load(spec_path(path))
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ConfigError(f"{path} is not a TensorRT engine for this TensorRT version and GPU: build it again")
    context = engine.create_execution_context()
    output = spec.outputs[0]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        spec.check_batch(inputs[0].shape[0])
        # Converted inputs are kept alive until the launch is enqueued: freed earlier, the allocator
        # could hand their memory to the next conversion. After it, stream order keeps them safe.
        keep = []
        for tensor_spec, tensor in zip(spec.inputs, inputs):
            tensor = tensor.to(torch_dtype(tensor_spec.dtype)).contiguous()
            keep.append(tensor)
            context.set_input_shape(tensor_spec.name, tuple(tensor.shape))
            context.set_tensor_address(tensor_spec.name, tensor.data_ptr())
        out = torch.empty(tuple(context.get_tensor_shape(output.name)), dtype=torch_dtype(output.dtype),
                          device=inputs[0].device)
        context.set_tensor_address(output.name, out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise ConfigError(f"TensorRT failed to run {path}")
        return out

    return run, spec
