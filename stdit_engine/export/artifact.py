"""ArtifactSTDiT: an exported STDiT forward (AOTInductor package or TensorRT engine) in the place of
the eager model in the sampler.

GuidedDenoiser computes the step-invariant parts once (caption state, timestep embeddings) and then
calls forward_embedded per step. An artifact computes the whole forward from the raw inputs, so
here the "caption state" is the caption itself with its lengths, the "timestep embedding" is the
timestep, and forward_embedded runs the artifact. The dtype and the learned null caption (which the
sampler needs for guidance) come from the eager model the artifact was exported from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..models.stdit import STDiT, caption_lengths
from .spec import ExportSpec, dtype_name, spec_path


class ArtifactSTDiT:
    def __init__(self, run: Callable[..., torch.Tensor], spec: ExportSpec, reference: STDiT):
        if spec.kind != "stdit":
            raise ConfigError(f"a {spec.kind} export is one block; the sampler needs the full STDiT forward")
        if spec.dtype != dtype_name(reference.dtype):
            raise ConfigError(f"the artifact computes in {spec.dtype} but the engine's STDiT is "
                              f"{dtype_name(reference.dtype)}: export it again with --dtype matching the engine")
        expected_x = (reference.in_channels, *reference.input_size)
        if tuple(spec.inputs[0].shape[1:]) != expected_x:
            raise ConfigError(f"the artifact takes latents {spec.inputs[0].shape[1:]}, the engine's preset "
                              f"{expected_x}: it was exported from another preset ({spec.preset})")
        self.run = run
        self.spec = spec
        self.reference = reference
        self.y_embedder = reference.y_embedder  # y_embedding: the null caption of guidance

    @property
    def dtype(self) -> torch.dtype:
        return self.reference.dtype

    def embed_caption(self, y: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return y.to(self.dtype), caption_lengths(y, mask)

    def embed_timestep(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A column [steps, 1]: the sampler takes row i and expands it over the guidance batch.
        column = timestep.float()[:, None]
        return column, column

    def forward_embedded(self, x, temb, t0, caption, lengths) -> torch.Tensor:
        return self.run(x.to(self.dtype), temb[:, 0].contiguous(), caption, lengths)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """STDiT.forward's contract, for callers that do not split the forward."""
        caption, lengths = self.embed_caption(y, mask)
        return self.run(x.to(self.dtype), timestep.float(), caption, lengths)


def load_artifact(path: str | Path, reference: STDiT, device: torch.device) -> ArtifactSTDiT:
    """The artifact at `path` (format read from its spec) as a model the sampler can drive on `device`."""
    spec = ExportSpec.load(spec_path(path))
    if spec.device != device.type:
        raise ConfigError(f"the artifact {path} runs on {spec.device}, the engine on {device.type}: "
                          f"export it with --device {device.type}")
    if spec.format == "aoti":
        from .aoti import load_aoti

        run, spec = load_aoti(path)
    elif spec.format == "tensorrt":
        from .tensorrt import load_engine

        run, spec = load_engine(path)
    else:
        raise ConfigError(f"{path} is a {spec.format} export, which the engine does not run: use ONNX Runtime, or "
                          "build a TensorRT engine from it (stdit_engine.export.tensorrt)")
    return ArtifactSTDiT(run, spec, reference)
