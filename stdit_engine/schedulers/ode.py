"""Samplers of the probability-flow ODE (and DDIM's stochastic family) on the v1.0 noise schedule.

Every step here is linear in four tensors: the latent x at the current time, the model's data
prediction x0 = (x - sigma*eps) / alpha, the previous step's x0 (multistep memory) and fresh noise:

    x0     = X0_FROM_X * x + X0_FROM_EPS * eps
    x_next = FROM_X * x + FROM_X0 * x0 + FROM_PREV_X0 * x0_prev + FROM_NOISE * noise

so one update serves DDIM (any eta), DPM-Solver++(2M) and the reference's DPM-Solver; UniPC adds
the x0 of two steps back (FROM_PREV2_X0 * x0_prev2) and a memory of two. Only the
coefficient table differs, computed in float64 on the host once per call. Time is continuous,
t in (0, 1], on the 1000 discrete linear-beta steps: log alpha is interpolated linearly between
t_k = (k+1)/1000 (the discrete step k, where the model is called with timestep k); sampling stops at
t = 1/1000 (the discrete step 0).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .base import NUM_TRAIN_STEPS, Sampler, linear_betas, upload

X0_FROM_X, X0_FROM_EPS, FROM_X, FROM_X0, FROM_PREV_X0, FROM_NOISE = range(6)
FROM_PREV2_X0 = 6  # UniPC's column: the x0 of two steps back


class NoiseSchedule:
    """alpha(t), sigma(t) and lambda(t) = log(alpha/sigma) of the linear-beta schedule, continuous t."""

    def __init__(self, num_train_steps: int = NUM_TRAIN_STEPS):
        self.num_train_steps = num_train_steps
        # float32 knots, as the reference's NoiseScheduleVP("discrete") keeps them
        self.knots = np.linspace(0.0, 1.0, num_train_steps + 1, dtype=np.float32)[1:].astype(np.float64)
        log_alphas = 0.5 * np.cumsum(np.log(1.0 - linear_betas(num_train_steps)))
        self.log_alpha_knots = log_alphas.astype(np.float32).astype(np.float64)

    def log_alpha(self, t: np.ndarray) -> np.ndarray:
        """Linear between the knots, t in [1/N, 1]."""
        return np.interp(np.asarray(t, dtype=np.float64), self.knots, self.log_alpha_knots)

    def alpha_sigma(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_alpha = self.log_alpha(t)
        return np.exp(log_alpha), np.sqrt(-np.expm1(2.0 * log_alpha))

    def model_timestep(self, t: np.ndarray) -> np.ndarray:
        """The model's timestep input at continuous time t (the discrete step k at t = (k+1)/N)."""
        return (np.asarray(t, dtype=np.float64) - 1.0 / self.num_train_steps) * self.num_train_steps


class DataPredictionSampler(Sampler):
    """A sampler whose update is the linear form above; subclasses give the times and the
    coefficients of x, x0, the previous x0 and the noise for each step."""

    draws_noise = False
    max_steps = NUM_TRAIN_STEPS - 1  # num_steps + 1 distinct times among the discrete steps
    default_grid: str | None = None  # a key of GRIDS where the sampler takes the `grid` option

    def __init__(self, num_steps: int = 20, cfg_scale: float = 7.0, guidance_channels: int | None = None, *,
                 grid: str | None = None):
        if grid is not None and (self.default_grid is None or grid not in GRIDS):
            choices = f"one of: {', '.join(GRIDS)}" if self.default_grid else "none (its grid is the reference's)"
            raise ConfigError(f"sampler {self.name!r} takes grid {choices}; got {grid!r}")
        self.grid = grid or self.default_grid
        super().__init__(num_steps, cfg_scale, guidance_channels)
        self.noise_schedule = NoiseSchedule()
        self.times = self.step_times()  # num_steps + 1 times: where each step starts, then where the last ends
        self.table = self._table()

    def step_times(self) -> np.ndarray:
        """[num_steps + 1] float64, decreasing: the model is evaluated at the first num_steps."""
        return GRIDS[self.grid](self.num_steps)

    def step_coefficients(self, alpha: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """[num_steps, 4] float64: FROM_X, FROM_X0, FROM_PREV_X0, FROM_NOISE of each step, given
        alpha and sigma at `self.times` (a sampler whose `update` reads more columns adds them after)."""
        raise NotImplementedError

    def _table(self) -> np.ndarray:
        alpha, sigma = self.noise_schedule.alpha_sigma(self.times)
        start_alpha, start_sigma = alpha[:-1], sigma[:-1]
        to_x0 = np.stack([1.0 / start_alpha, -start_sigma / start_alpha], axis=1)
        return np.concatenate([to_x0, self.step_coefficients(alpha, sigma)], axis=1)

    def model_timesteps(self, device: torch.device) -> torch.Tensor:
        return upload(self.noise_schedule.model_timestep(self.times[:-1]).astype(np.float32), device)

    def coefficient_table(self, device: torch.device) -> torch.Tensor:
        return upload(self.table.astype(np.float32), device)

    def new_memory(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape, dtype=torch.float32, device=z.device)

    def update(self, coefs, x, model_output, noise, memory):
        coefs, x, x0 = data_prediction(coefs, x, model_output)
        x_next = (coefs[FROM_X] * x + coefs[FROM_X0] * x0 + coefs[FROM_PREV_X0] * memory
                  + coefs[FROM_NOISE] * noise.to(x.dtype))
        memory.copy_(x0)
        return x_next


def data_prediction(coefs: torch.Tensor, x: torch.Tensor, model_output: torch.Tensor):
    """The row `coefs` and x in the update's working precision (at least float32), and the model's
    x0 prediction from x and the eps channels of its output."""
    work = torch.promote_types(x.dtype, torch.float32)
    coefs, x = coefs.to(work), x.to(work)
    eps = model_output[:, :x.shape[1]].to(work)
    return coefs, x, coefs[X0_FROM_X] * x + coefs[X0_FROM_EPS] * eps


def reference_times(num_steps: int) -> np.ndarray:
    """The reference's grid: num_steps + 1 times evenly spaced from t = 1 (step 999) to t = 1/N
    (step 0), where sampling stops (sigma 0.01 there, far below what decoding resolves); float32, as
    its torch.linspace, so the model is called at fractional timesteps."""
    return np.linspace(1.0, 1.0 / NUM_TRAIN_STEPS, num_steps + 1, dtype=np.float32).astype(np.float64)


def quadratic_whole_steps(num_steps: int, num_train_steps: int = NUM_TRAIN_STEPS) -> np.ndarray:
    """num_steps + 1 times from t = 1 to t = 1/N, evenly spaced in sqrt(t) ("time_quadratic" of the
    DPM-Solver paper: denser at low noise, where the data prediction changes fastest), rounded to
    the discrete steps the model was trained on and kept distinct."""
    roots = np.linspace(1.0, np.sqrt(1.0 / num_train_steps), num_steps + 1)
    steps = np.round(roots ** 2 * num_train_steps - 1).astype(np.int64)
    for i in range(num_steps - 1, -1, -1):  # many steps crowd the low end: keep each a step apart
        steps[i] = max(steps[i], steps[i + 1] + 1)
    return (steps + 1) / num_train_steps


def uniform_whole_steps(num_steps: int, num_train_steps: int = NUM_TRAIN_STEPS) -> np.ndarray:
    """num_steps + 1 whole steps evenly spaced in t from step N-1 to step 0 ("time_uniform", the
    spacing of the reference's DPM-Solver and of latent-diffusion samplers generally: more of the
    steps at high noise, where a video's layout and motion are decided)."""
    steps = np.round(np.linspace(num_train_steps - 1, 0, num_steps + 1)).astype(np.int64)
    return (steps + 1) / num_train_steps


# The whole-step grids of the ODE samplers (their `grid` option, e.g. "unipc:grid=quadratic").
GRIDS = {"quadratic": quadratic_whole_steps, "uniform": uniform_whole_steps}


def first_order(alpha: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """DDIM (eta 0) = DPM-Solver++ order 1 from each time to the next: x_next = sigma'/sigma * x +
    (alpha' - alpha * sigma'/sigma) * x0. [num_steps, 4]."""
    ratio = sigma[1:] / sigma[:-1]
    zeros = np.zeros_like(ratio)
    return np.stack([ratio, alpha[1:] - alpha[:-1] * ratio, zeros, zeros], axis=1)


def second_order_multistep(alpha: np.ndarray, sigma: np.ndarray, second: np.ndarray) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022, the "dpmsolver" variant of its second-order multistep
    update): where `second[i]`, step i also uses the x0 of step i-1 through the finite difference
    D1 = (x0_i - x0_{i-1}) / r, r = h_{i-1} / h_i in log-SNR lambda; the other steps are first order."""
    table = first_order(alpha, sigma)
    log_snr = np.log(alpha) - np.log(sigma)
    for i in np.flatnonzero(second):
        h, h_prev = log_snr[i + 1] - log_snr[i], log_snr[i] - log_snr[i - 1]
        phi = np.expm1(-h)
        # x_next = sigma'/sigma x - alpha' phi x0_i - 0.5 alpha' phi (x0_i - x0_{i-1}) / r
        half = 0.5 * alpha[i + 1] * phi * h / h_prev
        table[i, 1] = -alpha[i + 1] * phi - half
        table[i, 2] = half
    return table


class DDIM(DataPredictionSampler):
    """DDIM (Song et al. 2021) on time-quadratic whole steps; eta 0 is the deterministic ODE
    sampler, eta 1 the ancestral one (it then draws noise as IDDPM does)."""

    name = "ddim"
    default_grid = "quadratic"

    def __init__(self, num_steps: int = 20, cfg_scale: float = 7.0, guidance_channels: int | None = None, *,
                 grid: str | None = None, eta: float = 0.0):
        if not (isinstance(eta, (int, float)) and 0.0 <= eta <= 1.0):
            raise ConfigError(f"DDIM eta must be a number from 0 (deterministic) to 1 (ancestral), got {eta!r}")
        self.eta = float(eta)
        super().__init__(num_steps, cfg_scale, guidance_channels, grid=grid)

    @property
    def draws_noise(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def step_coefficients(self, alpha, sigma):
        if self.eta == 0:
            return first_order(alpha, sigma)
        # x_next = alpha' x0 + sqrt(sigma'^2 - s^2) eps + s noise, eps = (x - alpha x0) / sigma,
        # s = eta * sigma'/sigma * sqrt(1 - (alpha / alpha')^2)  (DDIM eq. 16)
        a, s, a_next, s_next = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
        spread = self.eta * s_next / s * np.sqrt(1.0 - (a / a_next) ** 2)
        from_x = np.sqrt(np.clip(s_next ** 2 - spread ** 2, 0.0, None)) / s
        return np.stack([from_x, a_next - a * from_x, np.zeros_like(from_x), spread], axis=1)


class DPMSolverPlusPlus(DataPredictionSampler):
    """DPM-Solver++(2M) on time-quadratic whole steps: the tuned fast sampler. Only the first step
    (no previous x0 yet) is first order. It differs from the reference's DPM-Solver ("dpm-solver")
    in four ways: steps evenly spaced in sqrt(t) rather than t (its error is several times smaller
    at 10-20 steps on the analytic model), at the whole timesteps the model was trained on,
    guidance by the v1.0 convention (`guidance_channels`, 3 by default), and the last step second
    order at any step count (the reference drops it to first order below 10 steps)."""

    name = "dpm-solver++"
    default_grid = "quadratic"

    def step_coefficients(self, alpha, sigma):
        second = np.ones(self.num_steps, dtype=bool)
        second[0] = False
        return second_order_multistep(alpha, sigma, second)


class UniPC(DataPredictionSampler):
    """UniPC (Zhao et al. 2023) with B(h) = expm1(h) ("bh2"), data prediction, order 2, by default
    on whole steps uniform in t: DPM-Solver++(2M)'s step as the predictor, then, once the model has
    been called at the predicted point, a corrector (UniC) that redoes that step with the x0 the
    model gave there, for no extra model call. The model's input is always the prediction, so each
    row maps the predicted x_k, the model's x0 there and the x0 of the two steps before to the next
    prediction: that step's corrector and the next step's predictor folded into one linear update.
    The first corrector is first order (one x0 before it), as the paper's warm-up; the last step is
    predicted alone (no model call follows to correct it) and first order, as in the reference
    UniPC (its lower_order_final)."""

    name = "unipc"
    # Measured on the proxy model (BENCHMARKS.md): its error at 10-15 steps comes from the high-noise
    # end, which the uniform grid steps through finely; on the analytic model the quadratic one is
    # better, so `grid` stays an option to measure on one's own weights.
    default_grid = "uniform"

    def step_coefficients(self, alpha, sigma):
        """[num_steps, 5]: the four columns of every sampler, then FROM_PREV2_X0."""
        log_snr = np.log(alpha) - np.log(sigma)
        second = np.ones(self.num_steps, dtype=bool)
        second[0] = second[-1] = False
        predictor = second_order_multistep(alpha, sigma, second)
        rows = np.zeros((self.num_steps, 5))
        for k in range(self.num_steps):
            ratio = predictor[k, 0]  # sigma_{k+1} / sigma_k
            # x^c_k = x^p_k + c_0 x0_k + c_1 x0_{k-1} + c_2 x0_{k-2}; the first step has nothing to correct
            c = unic_correction(alpha, log_snr, k) if k > 0 else np.zeros(3)
            # x^p_{k+1} = ratio x^c_k + (the predictor's own x0 and previous-x0 terms)
            rows[k] = [ratio, ratio * c[0] + predictor[k, 1], ratio * c[1] + predictor[k, 2], 0.0, ratio * c[2]]
        return rows

    def new_memory(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros((2, *z.shape), dtype=torch.float32, device=z.device)  # x0 of the last two steps

    def update(self, coefs, x, model_output, noise, memory):
        coefs, x, x0 = data_prediction(coefs, x, model_output)
        previous, before = memory[0], memory[1]
        x_next = (coefs[FROM_X] * x + coefs[FROM_X0] * x0 + coefs[FROM_PREV_X0] * previous
                  + coefs[FROM_PREV2_X0] * before)
        before.copy_(previous)
        previous.copy_(x0)
        return x_next


def unic_correction(alpha: np.ndarray, log_snr: np.ndarray, k: int) -> np.ndarray:
    """UniC-bh2's correction of the step into time k once the model's x0_k there is known, as the
    coefficients of x0_k, x0_{k-1}, x0_{k-2} to add to the predicted x_k. First order at k = 1;
    after, second order: the predictor's difference D1 = (x0_{k-2} - x0_{k-1}) / r and the new
    x0_k - x0_{k-1}, weighed by the rho that solve the paper's order conditions R rho = b."""
    h = log_snr[k] - log_snr[k - 1]
    hh = -h  # data prediction integrates in -lambda
    b_h = np.expm1(hh)
    scale = -alpha[k] * b_h
    if k == 1:  # rho = 1/2 on x0_k - x0_{k-1}; the predictor had no D1
        return scale * np.array([0.5, -0.5, 0.0])
    r = (log_snr[k - 2] - log_snr[k - 1]) / h
    phi_2 = b_h / hh - 1.0
    phi_3 = phi_2 / hh - 0.5
    rho = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), np.array([phi_2, 2.0 * phi_3]) / b_h)
    # corrected - predicted = scale * ((rho_0 - 1/2) D1 + rho_1 (x0_k - x0_{k-1})): the predictor took D1 / 2
    d1 = (rho[0] - 0.5) / r
    return scale * np.array([rho[1], -d1 - rho[1], d1])


class ReferenceDPMSolver(DataPredictionSampler):
    """The DPM-Solver that Open-Sora v1.0 ships (opensora/schedulers/dpms): DPM-Solver++ multistep,
    order 2, time-uniform steps from t = 1 to t = 1/1000, the model called at the fractional
    timesteps (t - 1/1000) * 1000 of this grid, guidance on all four eps channels."""

    name = "dpm-solver"
    min_steps = 2  # the reference asserts steps >= order
    default_guidance_channels = 4
    LOWER_ORDER_FINAL_BELOW = 10  # with fewer steps, its last step is first order

    def step_times(self) -> np.ndarray:
        return reference_times(self.num_steps)

    def model_timesteps(self, device: torch.device) -> torch.Tensor:
        # (t - 1/N) * N evaluated in float32, as the reference's model wrapper does
        times = torch.from_numpy(self.times[:-1].astype(np.float32))
        timesteps = (times - 1.0 / NUM_TRAIN_STEPS) * NUM_TRAIN_STEPS
        return upload(timesteps.numpy(), device)

    def step_coefficients(self, alpha, sigma):
        second = np.ones(self.num_steps, dtype=bool)
        second[0] = False
        if self.num_steps < self.LOWER_ORDER_FINAL_BELOW:
            second[-1] = False
        return second_order_multistep(alpha, sigma, second)
