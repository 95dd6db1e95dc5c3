"""The quality harness: sampler configs against a reference run on the same initial noise.

For every seed the initial latent is drawn once (as `Engine.generate` draws it), the reference
config (by default a 250-step DDIM: the ODE's solution, to solver accuracy) and every config run
from it, and each result is compared with the reference: latent relative L2 and, when the runner
decodes, PSNR / SSIM of the uint8 frames. Those distances are the measure for the deterministic
(ODE) samplers; for the stochastic ones (iddpm, ddim with eta > 0) a per-sample distance mostly
measures their noise, so every row also carries distribution statistics over all samples (mean
gap and std ratio against the reference's samples) and, on the proxy model, how often samples show
the colour, direction and speed of their captions.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import torch

from ..errors import ConfigError
from ..schedulers import Sampler, make_sampler
from .metrics import psnr, relative_l2, ssim


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler name (as `generate(sampler=...)` takes it) and its number of steps: "dpm-solver++@20"."""

    sampler: str
    steps: int

    @classmethod
    def parse(cls, text: str) -> "SamplerConfig":
        name, at, steps = text.rpartition("@")
        if not at or not steps.isdigit():
            raise ConfigError(f"sampler config {text!r} is not NAME@STEPS, e.g. dpm-solver++@20 or ddim:eta=1@50")
        return cls(name, int(steps))

    @classmethod
    def parse_list(cls, text: str) -> list["SamplerConfig"]:
        """Comma-separated configs, whose sampler names may carry comma-separated options: each
        config ends at its "@STEPS", so "ddim:eta=1,grid=uniform@20,unipc@15" is two."""
        configs, pending = [], []
        for part in filter(None, text.split(",")):
            pending.append(part)
            if "@" in part:
                configs.append(cls.parse(",".join(pending)))
                pending = []
        if pending:
            configs.append(cls.parse(",".join(pending)))  # no @STEPS: parse says what is wrong
        return configs

    @property
    def label(self) -> str:
        return f"{self.sampler}@{self.steps}"

    def build(self, cfg_scale: float, guidance_channels: int | None) -> Sampler:
        return make_sampler(self.sampler, num_steps=self.steps, cfg_scale=cfg_scale, guidance_channels=guidance_channels)


class Runner(Protocol):
    """What the harness needs of a model: initial noise per seed, a denoise, a decode (or None)."""

    def initial_noise(self, seed: int) -> torch.Tensor: ...

    def denoise(self, sampler: Sampler, z: torch.Tensor, seed: int) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor | None: ...


@dataclass
class QualityRow:
    config: str
    stochastic: bool
    seconds: float  # per call (all prompts of one seed), wall clock, device synchronised
    latent_rel_l2: float  # mean over seeds
    psnr_db: float  # mean over seeds; inf when every run equals the reference
    ssim: float
    mean_gap: float  # |mean of samples - mean of reference samples| / reference std, averaged over elements
    std_ratio: float  # std of all samples / std of all reference samples
    caption_accuracy: dict = field(default_factory=dict)  # colour / direction / speed, on the proxy

    def flat(self) -> dict:
        row = asdict(self)
        row.update({f"{k}_accuracy": v for k, v in row.pop("caption_accuracy").items()})
        return row


def evaluate(runner: Runner, configs: Sequence[SamplerConfig], seeds: Sequence[int],
             reference: SamplerConfig = SamplerConfig("ddim", 250), cfg_scale: float = 7.0,
             guidance_channels: int | None = None, read_captions=None, progress=None) -> list[QualityRow]:
    """One row per config (the reference itself first). `read_captions(latents) -> dict` scores
    caption following, when the model has a task to score it by (the proxy). `progress(line)` is
    told of each run as it ends: a harness run can take many minutes."""
    if not configs or not seeds:
        raise ConfigError("the quality harness needs at least one sampler config and one seed")
    samplers = [c.build(cfg_scale, guidance_channels) for c in (reference, *configs)]  # fail early on bad configs
    results: dict[int, list] = {i: [] for i in range(len(samplers))}
    for seed_index, seed in enumerate(seeds):
        z = runner.initial_noise(seed)
        reference_latent = reference_frames = None
        for i, sampler in enumerate(samplers):
            began = time.perf_counter()
            latent = runner.denoise(sampler, z, seed)
            if latent.is_cuda:
                torch.cuda.synchronize(latent.device)
            seconds = time.perf_counter() - began
            frames = runner.decode(latent)
            if i == 0:
                reference_latent, reference_frames = latent, frames
            distances = [relative_l2(latent, reference_latent), math.nan, math.nan]
            if frames is not None:
                distances[1:] = psnr(frames, reference_frames), ssim(frames, reference_frames)
            results[i].append((seconds, latent.float().cpu(), *distances))
            if progress is not None:
                done = seed_index * len(samplers) + i + 1
                progress(f"[{done}/{len(seeds) * len(samplers)}] seed {seed}, {(reference, *configs)[i].label}: "
                         f"{seconds:.1f} s")
    reference_samples = torch.cat([r[1] for r in results[0]])
    rows = []
    for i, sampler in enumerate(samplers):
        runs = results[i]
        samples = torch.cat([r[1] for r in runs])
        spread = float(reference_samples.std())
        rows.append(QualityRow(
            config=(reference, *configs)[i].label, stochastic=sampler.draws_noise,
            seconds=sum(r[0] for r in runs) / len(runs),
            latent_rel_l2=sum(r[2] for r in runs) / len(runs),
            psnr_db=sum(r[3] for r in runs) / len(runs),
            ssim=sum(r[4] for r in runs) / len(runs),
            mean_gap=float((samples.mean(0) - reference_samples.mean(0)).abs().mean()) / spread,
            std_ratio=float(samples.std()) / spread,
            caption_accuracy=read_captions(samples) if read_captions else {},
        ))
    return rows


def write_csv(rows: list[QualityRow], path: Path) -> None:
    flat = [row.flat() for row in rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)


def write_plot(rows: list[QualityRow], path: Path, title: str) -> None:
    """Time per call against the distance to the reference (PSNR where frames were decoded, else
    latent relative L2), one labelled point per config; stochastic ones hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decoded = any(math.isfinite(r.psnr_db) for r in rows[1:])
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows[1:]:  # the reference is at distance 0 (infinite PSNR)
        value = row.psnr_db if decoded else row.latent_rel_l2
        axes.scatter(row.seconds, value, facecolors="none" if row.stochastic else "C0", edgecolors="C0")
        axes.annotate(row.config, (row.seconds, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.set_xlabel("seconds per call")
    axes.set_ylabel(f"PSNR (dB) vs {rows[0].config}" if decoded else f"latent relative L2 vs {rows[0].config}")
    if not decoded:
        axes.set_yscale("log")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
