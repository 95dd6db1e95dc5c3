"""IDDPM sampling with classifier-free guidance, as the Open-Sora v1.0 reference does it (SPEC section 3).

Quantities are computed in float64 and, like the reference, cast to float32 when they are applied,
so a float32/float16 latent is updated in float32. The noise follows the reference script's RNG
protocol exactly: one draw of the full guidance-batch shape (2n rows) per step, in the current
latent's dtype, of which rows 0..n-1 are used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, SamplingError

NUM_TRAIN_STEPS = 1000
NAN_CHECK_EVERY = 10  # steps between (asynchronous) looks at whether the latent went non-finite


def linear_betas(num_train_steps: int = NUM_TRAIN_STEPS) -> np.ndarray:
    scale = 1000 / num_train_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_train_steps, dtype=np.float64)


def respaced_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """The kept training steps for a single section of `num_steps` evenly spaced steps.

    Accumulates the float stride and rounds (Python's round-half-even), exactly as the reference.
    """
    if num_steps == 1:
        return [0]
    stride = (num_train_steps - 1) / (num_steps - 1)
    kept, position = [], 0.0
    for _ in range(num_steps):
        kept.append(round(position))
        position += stride
    return kept


@dataclass(frozen=True)
class SpacedSchedule:
    """Per-index coefficients of the respaced diffusion process (all float64 numpy arrays)."""

    timestep_map: np.ndarray
    betas: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    log_betas: np.ndarray

    @classmethod
    def build(cls, num_steps: int, num_train_steps: int = NUM_TRAIN_STEPS) -> "SpacedSchedule":
        base_cumprod = np.cumprod(1.0 - linear_betas(num_train_steps))
        kept = respaced_timesteps(num_train_steps, num_steps)
        # The spaced process keeps the cumulative alphas of the kept steps and re-derives its betas.
        cumprod_kept = base_cumprod[kept]
        betas = 1.0 - cumprod_kept / np.append(1.0, cumprod_kept[:-1])
        alphas = 1.0 - betas
        cumprod = np.cumprod(alphas)
        cumprod_prev = np.append(1.0, cumprod[:-1])
        posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
        return cls(
            timestep_map=np.asarray(kept, dtype=np.int64),
            betas=betas,
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / cumprod),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / cumprod - 1.0),
            posterior_mean_coef1=betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
            posterior_mean_coef2=(1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
            # The variance at index 0 is 0; the reference clips its log to that of index 1.
            posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            log_betas=np.log(betas),
        )

    def __len__(self) -> int:
        return len(self.timestep_map)


# Columns of the per-index coefficient table (float32, as the reference applies its float64
# quantities). NONZERO is 0 at index 0, where no noise is added.
LOG_BETA, POST_LOG_VAR, SQRT_RECIP, SQRT_RECIPM1, MEAN_COEF1, MEAN_COEF2, NONZERO = range(7)


def coefficient_table(schedule: SpacedSchedule, device: torch.device | str = "cpu") -> torch.Tensor:
    """[num_steps, 7] float32 on `device`, columns as named above: one row per spaced index."""
    columns = [schedule.log_betas, schedule.posterior_log_variance_clipped, schedule.sqrt_recip_alphas_cumprod,
               schedule.sqrt_recipm1_alphas_cumprod, schedule.posterior_mean_coef1, schedule.posterior_mean_coef2,
               (np.arange(len(schedule)) != 0).astype(np.float64)]
    return upload(np.stack(columns, axis=1).astype(np.float32), device)


def upload(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array on `device`; to a GPU through pinned memory, so the copy does not block the host."""
    tensor = torch.from_numpy(array)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def p_sample_step(coefs: torch.Tensor, x: torch.Tensor, model_output: torch.Tensor,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step with the coefficient row `coefs` [7]: returns (x_{t-1}, predicted x0).

    model_output has 2C channels: eps, then the variance interpolation value v in [-1, 1]. Pure
    tensor arithmetic (no host branch), so it can be captured in a CUDA graph.
    """
    # The reference's coefficients are full float32 tensors, so a half-precision x or model output
    # is promoted: the update runs in float32 (float64 stays float64). frac is formed before that.
    work = torch.promote_types(x.dtype, torch.float32)
    channels = x.shape[1]
    eps, v = model_output[:, :channels].to(work), model_output[:, channels:]
    frac = ((v + 1) / 2).to(work)
    coefs, x = coefs.to(work), x.to(work)
    log_variance = frac * coefs[LOG_BETA] + (1 - frac) * coefs[POST_LOG_VAR]
    pred_x0 = coefs[SQRT_RECIP] * x - coefs[SQRT_RECIPM1] * eps
    mean = coefs[MEAN_COEF1] * pred_x0 + coefs[MEAN_COEF2] * x
    return mean + coefs[NONZERO] * torch.exp(0.5 * log_variance) * noise.to(work), pred_x0


def guide(model_output: torch.Tensor, cfg_scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance on a [cond; uncond] batch -> the n guided rows.

    eps channels < `channels` become uncond + s*(cond - uncond); the other channels (the rest of
    eps and the variance values) are the conditional half's, unchanged.
    """
    cond, uncond = model_output.chunk(2)
    guided = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)


Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[tuple, torch.dtype, torch.device], torch.Tensor]


class IDDPM:
    def __init__(self, num_steps: int = 100, cfg_scale: float = 7.0, guidance_channels: int = 3):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if num_steps > NUM_TRAIN_STEPS:
            raise ConfigError(f"num_steps must be at most {NUM_TRAIN_STEPS} (the training steps), got {num_steps}")
        if not math.isfinite(cfg_scale):
            raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale!r} (the reference uses 7.0)")
        if guidance_channels not in (3, 4):
            raise ConfigError(
                f"guidance_channels must be 3 (the released v1.0 sampler) or 4 (all latent channels), got {guidance_channels!r}"
            )
        self.num_steps = num_steps
        self.cfg_scale = float(cfg_scale)
        self.guidance_channels = guidance_channels
        self.schedule = SpacedSchedule.build(num_steps)

    def model_timesteps(self, device: torch.device) -> torch.Tensor:
        """The original training timestep of each spaced index, as float, indexed by spaced index."""
        return upload(self.schedule.timestep_map.astype(np.float32), device)

    def sample(self, model: Model, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
               y_null: torch.Tensor, generator: torch.Generator | None = None,
               progress: Callable | bool = False, noise_fn: NoiseFn | None = None) -> torch.Tensor:
        """Denoise z [n, C, T, H, W] under caption y [n, 1, L, Cc]; returns the final latent [n, ...].

        `model(x, timestep, y, mask)` is the STDiT forward; it is called on the guidance batch
        [x; x] with captions [y; y_null] and the mask of the n conditional rows. This is the plain
        loop of the reference; engine/denoise.py runs the same steps with the step-invariant work
        hoisted out and the step in a CUDA graph.
        """
        n = z.shape[0]
        if y.shape[0] != n:
            raise ConfigError(f"{y.shape[0]} captions for {n} latents")
        captions = torch.cat([y, y_null.expand_as(y).to(y.dtype)])
        timesteps = self.model_timesteps(z.device)
        coefs = coefficient_table(self.schedule, z.device)

        def step(x: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
            model_output = model(torch.cat([x, x]), timesteps[index].expand(2 * n), captions, mask)
            guided = guide(model_output, self.cfg_scale, self.guidance_channels)
            return p_sample_step(coefs[index], x, guided, noise)[0]

        return self.run(step, z, generator=generator, progress=progress, noise_fn=noise_fn)

    def run(self, step: StepFn, z: torch.Tensor, generator: torch.Generator | None = None,
            progress: Callable | bool = False, noise_fn: NoiseFn | None = None) -> torch.Tensor:
        """The step loop around `step(x, index, noise) -> x_{t-1}`, spaced indices from last to 0.

        Noise follows the reference script's RNG protocol: one draw per step (the last one too) of
        the full 2n-row guidance shape in the current latent's dtype, rows 0..n-1 used.
        `noise_fn(shape, dtype, device)` replaces the draw from `generator` (to replay recorded noise).
        `progress`: True for a tqdm bar, or a callable wrapping the step iterable.
        No host synchronisation happens inside the loop (see NonFiniteWatch).
        """
        n = z.shape[0]
        noise_shape = (2 * n, *z.shape[1:])
        watch = NonFiniteWatch(z.device, self.num_steps)
        x = z
        steps = list(enumerate(range(self.num_steps - 1, -1, -1)))
        for step_number, index in _wrap_progress(steps, progress):
            if noise_fn is None:
                noise = torch.randn(noise_shape, dtype=x.dtype, device=x.device, generator=generator)
            else:
                noise = noise_fn(noise_shape, x.dtype, x.device)
            x = step(x, index, noise[:n])
            watch.record(x, step_number)
        watch.finish()
        return x


StepFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


class NonFiniteWatch:
    """Notices a NaN/inf latent and stops sampling, naming the first bad step, without syncing.

    The first bad step is kept on the device; every few steps it is copied to pinned host memory
    asynchronously and read once the copy's event has completed, so a bad run stops a few steps
    late instead of stalling every step. `finish()` waits for the last copy.
    """

    def __init__(self, device: torch.device, num_steps: int):
        self.num_steps = num_steps
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.cuda = device.type == "cuda"
        self.host = torch.full((), -1, dtype=torch.long, pin_memory=self.cuda)
        self.copied = torch.cuda.Event() if self.cuda else None

    def record(self, x: torch.Tensor, step_number: int) -> None:
        bad_now = (self.first_bad < 0) & ~torch.isfinite(x).all()
        self.first_bad = torch.where(bad_now, step_number, self.first_bad)
        if step_number % NAN_CHECK_EVERY != NAN_CHECK_EVERY - 1:
            return
        if not self.cuda:  # reading a CPU tensor costs nothing
            self._raise_if_bad(int(self.first_bad))
            return
        if self.copied.query():  # the copy issued at the previous check has landed
            self._raise_if_bad(int(self.host))
        self.host.copy_(self.first_bad, non_blocking=True)
        self.copied.record()

    def finish(self) -> None:
        """Waits for the loop's work (an event wait, after the loop) and raises if it went bad."""
        self.host.copy_(self.first_bad, non_blocking=self.cuda)
        if self.cuda:
            self.copied.record()
            self.copied.synchronize()
        self._raise_if_bad(int(self.host))

    def _raise_if_bad(self, step_number: int) -> None:
        if step_number >= 0:
            raise SamplingError(
                f"the latent became NaN/inf at sampling step {step_number + 1} of {self.num_steps}; this "
                "usually means fp16 overflow (try dtype=torch.bfloat16 or float32) or a corrupt checkpoint"
            )


def _wrap_progress(steps: list, progress: Callable | bool):
    if callable(progress):
        return progress(steps)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(steps, desc="denoise", unit="step")
    return steps
