"""Calibration of the residual step cache for one checkpoint (`stdit-engine calibrate-cache`).

Uncached runs record, at every model evaluation and for every prompt, the relative L1 change from
the previous evaluation of (a) the first block's modulated input and (b) the model output. The
fit is a polynomial from (a) to (b), pooled over everything recorded; per sampler and step count,
the mean curve of (a) over the prompts is kept.

A step's change says what reusing the last residual errs there, not what that error does to the
video: a sampler carries an early error through every later step, and how much it grows depends on
the checkpoint and the sampler.
So per sampler and step count the calibration also measures each step's sensitivity: how far the
final latent moves (relative L2, mean over the prompts) when that step alone reuses the residual of
the step before, from the same noise as the uncached run; measured at up to SENSITIVITY_STEPS
steps, interpolated (geometrically) between them. engine/step_cache.py turns polynomial(curve) and
the sensitivities into the static schedule of which steps run the blocks. All depend on the
weights, so the file is checked against the model it is loaded for.
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
from .step_cache import one_reuse_plan

FORMAT = "stdit-engine step-cache calibration"
VERSION = 2  # 2: with the sensitivities
POLYNOMIAL_DEGREE = 4
# One sampling run each: evenly spread over the steps, the rest interpolated.
SENSITIVITY_STEPS = 12
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
    sensitivities: dict[str, tuple[float, ...]]  # curve_key -> per evaluation (module docstring)
    model: dict  # what it was fitted for: preset, depth, hidden_size, fingerprint
    prompts: int

    def _run(self, table: dict, sampler: str, evaluations: int) -> tuple[float, ...]:
        values = table.get(curve_key(sampler, evaluations))
        if values is None:
            raise ConfigError(
                f"the cache calibration has nothing for sampler {sampler!r} at {evaluations} steps (it has: "
                f"{', '.join(sorted(table))}); run `stdit-engine calibrate-cache --run {sampler}:{evaluations}` "
                "and load that file")
        return values

    def sensitivity(self, sampler: str, evaluations: int) -> tuple[float, ...]:
        return self._run(self.sensitivities, sampler, evaluations)

    def rescaled_changes(self, sampler: str, evaluations: int) -> list[float]:
        curve = self._run(self.curves, sampler, evaluations)
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
                  "polynomial": list(self.polynomial), "curves": {k: list(v) for k, v in self.curves.items()},
                  "sensitivities": {k: list(v) for k, v in self.sensitivities.items()}}
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
            raise ConfigError(f"{path} is not a step-cache calibration of version {VERSION}; make it (again) with "
                              "`stdit-engine calibrate-cache`")
        return cls(tuple(record["polynomial"]), {k: tuple(v) for k, v in record["curves"].items()},
                   {k: tuple(v) for k, v in record["sensitivities"].items()}, record["model"], record["prompts"])


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


def check_sensitivity_steps(at_most: int) -> int:
    """How many steps' sensitivity to measure per run: at least one, since a run without any would
    count every skip as free."""
    if not isinstance(at_most, int) or at_most < 1:
        raise ConfigError(f"the calibration measures the sensitivity at >= 1 step per run, got {at_most!r}")
    return at_most


def sensitivity_steps(evaluations: int, at_most: int = SENSITIVITY_STEPS) -> list[int]:
    """The steps whose sensitivity calibrate() measures: evenly over those the rule may skip (all
    but the first and the last), at most `at_most` of them."""
    if evaluations < 3:
        return []
    return sorted({round(float(v)) for v in np.linspace(1, evaluations - 2, min(evaluations - 2, at_most))})


def interpolate_sensitivity(measured: dict[int, float], evaluations: int) -> tuple[float, ...]:
    """Per evaluation, from the steps measured: geometric between them (a sensitivity falls by
    orders of magnitude over a run), the nearest one's beyond them; 0 where nothing was measured."""
    if not measured:
        return (0.0,) * evaluations
    steps = sorted(measured)
    logs = np.log([max(measured[k], np.finfo(np.float64).tiny) for k in steps])
    return tuple(float(v) for v in np.exp(np.interp(np.arange(evaluations), steps, logs)))


def _final_change(latent: torch.Tensor, reference: torch.Tensor) -> float:
    """Relative L2 of `latent` from `reference`, per prompt, mean over the prompts."""
    diff = (latent.float() - reference.float()).flatten(1).norm(dim=1)
    return float((diff / reference.float().flatten(1).norm(dim=1)).mean())


def calibrate(engine, runs: Sequence[tuple[str, int]] = (("iddpm", 100),), prompts: Sequence[str] = DEFAULT_PROMPTS,
              seed: int = 0, progress: bool = False, sensitivity_at_most: int = SENSITIVITY_STEPS) -> CacheCalibration:
    """Uncached runs of `engine` for every (sampler, steps) of `runs`, all prompts in one batch, and
    the sensitivity runs (module docstring). Not alongside generate() calls on the same engine (it
    takes no stage lock)."""
    check_sensitivity_steps(sensitivity_at_most)
    prompts = list(prompts)
    if len(prompts) < 1:
        raise ConfigError("calibration needs at least one prompt")
    curves, sensitivities, inputs, outputs = {}, {}, [], []
    y, mask = engine.encode_prompts(prompts)

    def sample(model, sampler_name: str, steps: int, cache=None) -> torch.Tensor:
        generator = torch.Generator(engine.device).manual_seed(seed)
        with engine.placement.stage("denoise"), torch.inference_mode():
            # The reference script's protocol: the initial latent, then each step's noise, from one generator.
            z = torch.randn((len(prompts), *engine.preset.latent_shape), generator=generator, device=engine.device,
                            dtype=engine.dtype)
            return GuidedDenoiser(model, use_cuda_graphs=False).sample(
                make_sampler(sampler_name, num_steps=steps), z, y, mask,
                engine.stdit.y_embedder.y_embedding[None, None], generator=generator, progress=progress, cache=cache)

    for sampler_name, steps in runs:
        recorder = ChangeRecorder(engine.stdit, len(prompts))
        reference = sample(recorder, sampler_name, steps)
        changes = np.stack(recorder.input_changes)  # [evaluations, prompts]
        key = curve_key(sampler_name, steps)
        curves[key] = tuple(float(v) for v in changes.mean(axis=1))
        inputs.append(changes[1:].ravel())
        outputs.append(np.stack(recorder.output_changes).ravel())
        measured = {k: _final_change(sample(engine.stdit, sampler_name, steps, one_reuse_plan(k, steps)), reference)
                    for k in sensitivity_steps(steps, sensitivity_at_most)}
        sensitivities[key] = interpolate_sensitivity(measured, steps)
    inputs, outputs = np.concatenate(inputs), np.concatenate(outputs)
    finite = np.isfinite(inputs).all() and np.isfinite(outputs).all()
    if not (finite and all(np.isfinite(v).all() for v in sensitivities.values())):
        raise ConfigError("the calibration runs gave non-finite changes (a NaN latent?); check the checkpoint and dtype")
    model = {"preset": engine.preset.name, "depth": len(engine.stdit.blocks), "hidden_size": engine.stdit.hidden_size,
             "fingerprint": weights_fingerprint(engine.stdit)}
    return CacheCalibration(fit_polynomial(inputs, outputs), curves, sensitivities, model, len(prompts))
