"""Calibration of the residual step cache for one checkpoint (`stdit-engine calibrate-cache`).

Uncached runs record, at every model evaluation and for every prompt, the relative L1 change from
the previous evaluation of (a) the first block's modulated input and (b) the model output. The
fit is a polynomial from (a) to (b), pooled over everything recorded; per sampler and step count,
the mean curve of (a) over the prompts is kept. engine/step_cache.py turns polynomial(curve) into
the static schedule of which steps run the blocks. Both depend on the weights, so the file is
checked against the model it is loaded for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..files import write_text_atomic
from ..models.stdit import LN_EPS, STDiT
from ..schedulers import make_sampler
from .denoise import GuidedDenoiser

FORMAT = "stdit-engine step-cache calibration"
VERSION = 1
POLYNOMIAL_DEGREE = 4
FINGERPRINT_VALUES = 8  # per tensor
FINGERPRINT_RTOL, FINGERPRINT_ATOL = 1e-2, 1e-4  # the same weights in fp16 or bf16 stay within this
# Varied subjects and motion, so the curves are not one prompt's.
DEFAULT_PROMPTS = (
    "a sea turtle swimming over a coral reef",
    "a red car driving through snow at night",
    "timelapse of clouds moving over a mountain range",
    "a cat playing with a ball of yarn on a wooden floor",
    "a crowded city street in the rain, people with umbrellas",
    "waves crashing on a rocky shore at sunset",
    "a close-up of a flower blooming",
    "an astronaut walking on the moon",
)


def curve_key(sampler: str, evaluations: int) -> str:
    """e.g. "iddpm:100", "ddim:eta=1:50": the sampler's name as generate() takes it, then its steps."""
    return f"{sampler}:{evaluations}"


def weights_fingerprint(model: STDiT) -> list[float]:
    """A few weights of tensors that stay in the model dtype under every option (not FP8-converted)."""
    tensors = (model.t_embedder.mlp[0].weight, model.final_layer.linear.weight, model.blocks[0].scale_shift_table)
    return [float(v) for t in tensors for v in t.detach().flatten()[:FINGERPRINT_VALUES].float()]


@dataclass(frozen=True)
class CacheCalibration:
    polynomial: tuple[float, ...]  # highest power first (numpy.polyval)
    curves: dict[str, tuple[float, ...]]  # curve_key -> mean change of the modulated input, per evaluation
    model: dict  # what it was fitted for: preset, depth, hidden_size, fingerprint
    prompts: int

    def rescaled_changes(self, sampler: str, evaluations: int) -> list[float]:
        curve = self.curves.get(curve_key(sampler, evaluations))
        if curve is None:
            raise ConfigError(
                f"the cache calibration has no curve for sampler {sampler!r} at {evaluations} steps (it has: "
                f"{', '.join(sorted(self.curves))}); run `stdit-engine calibrate-cache --sampler {sampler} "
                f"--steps {evaluations}` and load that file")
        # A relative change is >= 0; the polynomial, fitted where the changes were recorded, can dip
        # below 0 outside them (a sampler's first steps beside another's, in a pooled fit), and a
        # negative change would pay back the accumulated sum and skip steps that changed.
        return [max(0.0, float(v)) for v in np.polyval(self.polynomial, curve)]

    def check_model(self, model: STDiT, preset: str) -> None:
        """Refuses a file fitted for another architecture or other weights."""
        mine = {"preset": preset, "depth": len(model.blocks), "hidden_size": model.hidden_size}
        theirs = {k: self.model.get(k) for k in mine}
        if mine != theirs:
            raise ConfigError(f"the cache calibration was fitted for {theirs}, not this model {mine}; run "
                              "`stdit-engine calibrate-cache` for it")
        fingerprint = self.model.get("fingerprint", [])
        mine = weights_fingerprint(model)
        if len(fingerprint) != len(mine) or not np.allclose(mine, fingerprint, rtol=FINGERPRINT_RTOL,
                                                            atol=FINGERPRINT_ATOL):
            raise ConfigError("the cache calibration was fitted for other weights than this checkpoint's; run "
                              "`stdit-engine calibrate-cache` with this checkpoint")

    def save(self, path: str | Path) -> None:
        record = {"format": FORMAT, "version": VERSION, "model": self.model, "prompts": self.prompts,
                  "polynomial": list(self.polynomial), "curves": {k: list(v) for k, v in self.curves.items()}}
        write_text_atomic(path, json.dumps(record, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "CacheCalibration":
        path = Path(path)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read the cache calibration {path}: {err}; make it with "
                              "`stdit-engine calibrate-cache`") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
            raise ConfigError(f"{path} is not a step-cache calibration of version {VERSION}; make it with "
                              "`stdit-engine calibrate-cache`")
        return cls(tuple(record["polynomial"]), {k: tuple(v) for k, v in record["curves"].items()},
                   record["model"], record["prompts"])


def relative_l1(now: torch.Tensor, before: torch.Tensor, prompts: int) -> np.ndarray:
    """[prompts]: mean |now - before| / mean |before| over each prompt's rows of the guidance batch
    (rows p and prompts + p)."""
    def per_prompt(t: torch.Tensor) -> torch.Tensor:
        return t.float().reshape(2, prompts, -1).transpose(0, 1).reshape(prompts, -1)

    now, before = per_prompt(now), per_prompt(before)
    return ((now - before).abs().mean(dim=1) / before.abs().mean(dim=1)).cpu().numpy()


class ChangeRecorder:
    """The STDiT, as GuidedDenoiser calls it, recording the changes of each evaluation (eager only:
    it reads tensors on the host)."""

    def __init__(self, model: STDiT, prompts: int):
        self.model = model
        self.prompts = prompts
        self.previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self.input_changes: list[np.ndarray] = [np.zeros(prompts)]  # none before the first evaluation
        self.output_changes: list[np.ndarray] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def embed_caption(self, y, mask):
        return self.model.embed_caption(y, mask)

    def embed_timestep(self, timestep):
        return self.model.embed_timestep(timestep)

    def forward_embedded(self, x, temb, t0, caption_kv, kv_lengths) -> torch.Tensor:
        h0, _ = self.model.embed_tokens(x)
        shift, scale = self.model.blocks[0].modulation(t0)[:2]
        modulated = self.model.ops.ln_modulate(h0, shift, scale, LN_EPS)
        out = self.model.forward_embedded(x, temb, t0, caption_kv, kv_lengths)
        if self.previous is not None:
            self.input_changes.append(relative_l1(modulated, self.previous[0], self.prompts))
            self.output_changes.append(relative_l1(out, self.previous[1], self.prompts))
        self.previous = modulated, out
        return out


def fit_polynomial(input_changes: np.ndarray, output_changes: np.ndarray) -> tuple[float, ...]:
    """Least squares, degree 4 (as the published residual caches) or less where fewer points allow."""
    degree = min(POLYNOMIAL_DEGREE, len(np.unique(input_changes)) - 1)
    if degree < 1:
        raise ConfigError("too few distinct steps to fit the cache polynomial: calibrate with more steps or prompts")
    return tuple(float(c) for c in np.polyfit(input_changes, output_changes, degree))


def calibrate(engine, runs: Sequence[tuple[str, int]] = (("iddpm", 100),), prompts: Sequence[str] = DEFAULT_PROMPTS,
              seed: int = 0, progress: bool = False) -> CacheCalibration:
    """Uncached runs of `engine` for every (sampler, steps) of `runs`, all prompts in one batch.
    Not alongside generate() calls on the same engine (it takes no stage lock)."""
    prompts = list(prompts)
    if len(prompts) < 1:
        raise ConfigError("calibration needs at least one prompt")
    curves, inputs, outputs = {}, [], []
    y, mask = engine.encode_prompts(prompts)
    for sampler_name, steps in runs:
        recorder = ChangeRecorder(engine.stdit, len(prompts))
        generator = torch.Generator(engine.device).manual_seed(seed)
        with engine.placement.stage("denoise"), torch.inference_mode():
            # The reference script's protocol: the initial latent, then each step's noise, from one generator.
            z = torch.randn((len(prompts), *engine.preset.latent_shape), generator=generator, device=engine.device,
                            dtype=engine.dtype)
            GuidedDenoiser(recorder, use_cuda_graphs=False).sample(
                make_sampler(sampler_name, num_steps=steps), z, y, mask, engine.stdit.y_embedder.y_embedding[None, None],
                generator=generator, progress=progress)
        changes = np.stack(recorder.input_changes)  # [evaluations, prompts]
        curves[curve_key(sampler_name, steps)] = tuple(float(v) for v in changes.mean(axis=1))
        inputs.append(changes[1:].ravel())
        outputs.append(np.stack(recorder.output_changes).ravel())
    inputs, outputs = np.concatenate(inputs), np.concatenate(outputs)
    if not (np.isfinite(inputs).all() and np.isfinite(outputs).all()):
        raise ConfigError("the calibration runs gave non-finite changes (a NaN latent?); check the checkpoint and dtype")
    model = {"preset": engine.preset.name, "depth": len(engine.stdit.blocks), "hidden_size": engine.stdit.hidden_size,
             "fingerprint": weights_fingerprint(engine.stdit)}
    return CacheCalibration(fit_polynomial(inputs, outputs), curves, model, len(prompts))
