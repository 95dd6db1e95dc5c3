"""Exports of the STDiT forward for other serving stacks.

  spec.py        ExportSpec: names, shapes, dynamic axes, opset, dtype of an artifact (JSON beside it)
  exportable.py  the traced functions: the full forward on caption lengths, and one block
  onnx.py        ONNX export (torch.export-based exporter) and its check with ONNX Runtime
  aoti.py        AOTInductor packages: compile, load, check
  tensorrt.py    TensorRT engines from the ONNX, their cache key and runtime (experimental)
  artifact.py    ArtifactSTDiT: drives a loaded artifact as the sampler drives the eager STDiT
Nothing here is imported by the engine unless an export or an artifact is asked for.
"""
