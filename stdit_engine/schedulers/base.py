"""The interface every sampler implements, and the step loop they share.

A sampler is a table and a pure update. `coefficient_table` holds one row of float32 coefficients
per step, on the device; `update(coefs, x, model_output, noise, memory)` is tensor arithmetic on
that row, the guided model output, the step's noise and `memory` (what a multistep method carries
from one step to the next, updated in place). Nothing in a step reads a value back to the host, so
engine/denoise.py can replay it from a CUDA graph whatever the sampler.
"""
from __future__ import annotations

import math
from typing import Callable, ClassVar

import numpy as np
import torch

from ..errors import ConfigError, SamplingError
from ..values import is_integer

NUM_TRAIN_STEPS = 1000
NAN_CHECK_EVERY = 10  # steps between (asynchronous) looks at whether the latent went non-finite

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[tuple, torch.dtype, torch.device], torch.Tensor]
StepFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def linear_betas(num_train_steps: int = NUM_TRAIN_STEPS) -> np.ndarray:
    scale = 1000 / num_train_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_train_steps, dtype=np.float64)


def upload(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array on `device`; to a GPU through pinned memory, so the copy does not block the host."""
    tensor = torch.from_numpy(array)
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def guide(model_output: torch.Tensor, cfg_scale: float | torch.Tensor, channels: int) -> torch.Tensor:
    """Classifier-free guidance on a [cond; uncond] batch -> the n guided rows.

    eps channels < `channels` become uncond + s*(cond - uncond); the other channels (the rest of
    eps and the variance values) are the conditional half's, unchanged. `cfg_scale` may be a 0-dim
    tensor (a CUDA graph's input): see `scale_by`.
    """
    cond, uncond = model_output.chunk(2)
    guided = uncond[:, :channels] + scale_by(cfg_scale, cond[:, :channels] - uncond[:, :channels])
    return torch.cat([guided, cond[:, channels:]], dim=1)


def scale_by(scale: float | torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """scale * values, the same bits whether `scale` is a Python float or a 0-dim tensor holding it.

    With a float, PyTorch multiplies in float32 (float64 for float64 values) and rounds the product
    to the values' dtype; a tensor scale would instead be rounded to a half-precision dtype first.
    So a tensor scale, held in that float32 (or float64) dtype, multiplies the values cast up to it.
    """
    if not isinstance(scale, torch.Tensor):
        return scale * values
    return (values.to(scale.dtype) * scale).to(values.dtype)


def scale_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a Python-float scale multiplies values of `dtype` (see scale_by)."""
    return torch.promote_types(dtype, torch.float32)


class Sampler:
    """Base of every sampler: argument checks, the plain guided loop and the shared step loop.

    Subclasses set `name`, `min_steps`, `max_steps`, `draws_noise` and implement `model_timesteps`,
    `coefficient_table` and `update`; `step_rows` says which table row each step uses.
    """

    name: ClassVar[str]
    min_steps: ClassVar[int] = 1
    max_steps: ClassVar[int] = NUM_TRAIN_STEPS
    draws_noise: ClassVar[bool] = True  # False: the update ignores its noise, none is drawn
    default_guidance_channels: ClassVar[int] = 3  # the released v1.0 sampler guides eps channels 0..2

    def __init__(self, num_steps: int = 100, cfg_scale: float = 7.0, guidance_channels: int | None = None):
        if not is_integer(num_steps) or not self.min_steps <= num_steps <= self.max_steps:
            raise ConfigError(f"num_steps for sampler {self.name!r} must be an integer from {self.min_steps} to "
                              f"{self.max_steps}, got {num_steps!r}")
        if not math.isfinite(cfg_scale):
            raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale!r} (the reference uses 7.0)")
        guidance_channels = self.default_guidance_channels if guidance_channels is None else guidance_channels
        if not is_integer(guidance_channels) or guidance_channels not in (3, 4):
            raise ConfigError(
                f"guidance_channels must be 3 (the released v1.0 sampler) or 4 (all latent channels), got {guidance_channels!r}"
            )
        self.num_steps = int(num_steps)
        self.cfg_scale = float(cfg_scale)
        self.guidance_channels = int(guidance_channels)

    # ------------------------------------------------------------------ what a subclass defines

    def model_timesteps(self, device: torch.device) -> torch.Tensor:
        """[rows] float32: the timestep the model is called with, per table row."""
        raise NotImplementedError

    def coefficient_table(self, device: torch.device) -> torch.Tensor:
        """[rows, K] float32 on `device`: the coefficients of each table row."""
        raise NotImplementedError

    def update(self, coefs: torch.Tensor, x: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor,
               memory: torch.Tensor) -> torch.Tensor:
        """x after this step, from the row `coefs`, the guided model output (eps, then the variance
        values) and the step's noise [n, ...]. Pure tensor arithmetic; may write `memory` in place."""
        raise NotImplementedError

    def step_rows(self) -> range:
        """The table row of each step, in sampling order."""
        return range(self.num_steps)

    def new_memory(self, z: torch.Tensor) -> torch.Tensor:
        """What the update carries between steps, zeroed (its first step does not read it)."""
        return z.new_zeros((0,), dtype=torch.float32)

    # ------------------------------------------------------------------ loops

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
        coefs = self.coefficient_table(z.device)
        memory = self.new_memory(z)

        def step(x: torch.Tensor, row: int, noise: torch.Tensor) -> torch.Tensor:
            model_output = model(torch.cat([x, x]), timesteps[row].expand(2 * n), captions, mask)
            return self.update(coefs[row], x, guide(model_output, self.cfg_scale, self.guidance_channels), noise,
                               memory)

        return self.run(step, z, generator=generator, progress=progress, noise_fn=noise_fn)

    def run(self, step: StepFn, z: torch.Tensor, generator: torch.Generator | None = None,
            progress: Callable | bool = False, noise_fn: NoiseFn | None = None, monitor=None) -> torch.Tensor:
        """The step loop around `step(x, row, noise) -> x after the step`, rows as `step_rows` says.

        Noise follows the reference script's RNG protocol: one draw per step (the last one too) of
        the full 2n-row guidance shape in the current latent's dtype, rows 0..n-1 used. A sampler
        that does not draw noise gets zeros and leaves the generator untouched.
        `noise_fn(shape, dtype, device)` replaces the draw from `generator` (to replay recorded noise).
        `progress`: True for a tqdm bar, or a callable wrapping the step iterable.
        `monitor` (engine/progress.py StepMonitor): told after each queued step; it reports the
        steps the device completed and raises Cancelled when the call is cancelled.
        No host synchronisation happens inside the loop (see NonFiniteWatch).
        """
        n = z.shape[0]
        noise_shape = (2 * n, *z.shape[1:])
        watch = NonFiniteWatch(z.device, self.num_steps)
        silence = None if self.draws_noise else torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        x = z
        for step_number, row in _wrap_progress(list(enumerate(self.step_rows())), progress):
            if silence is not None:
                noise = silence
            elif noise_fn is None:
                noise = torch.randn(noise_shape, dtype=x.dtype, device=x.device, generator=generator)[:n]
            else:
                noise = noise_fn(noise_shape, x.dtype, x.device)[:n]
            x = step(x, row, noise)
            watch.record(x, step_number)
            if monitor is not None:
                monitor.step_queued()
        watch.finish()
        return x


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
            # The cause depends on what the caller ran (dtype, guidance scale): Engine adds it.
            raise SamplingError(f"the latent became NaN/inf at sampling step {step_number + 1} of {self.num_steps}")


def _wrap_progress(steps: list, progress: Callable | bool):
    if callable(progress):
        return progress(steps)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(steps, desc="denoise", unit="step")
    return steps
