"""The proxy model's task: synthetic text-to-video in latent space, generated on the fly.

A caption "a <colour> ball moving <direction> <speed>" shows one Gaussian ball on an empty latent
of the 16x256x256 preset's grid (4 x 16 x 32 x 32): its latent channels are the colour's vector,
it enters near the border it moves away from (shifted at random within START_JITTER) and moves by
the direction times the speed each frame. `read_captions`
recovers colour, direction and speed from any latent, so samples can be scored by how well they
follow their captions (chance: 1/4, 1/4, 1/2).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch

FRAMES, SIZE = 16, 32
RADIUS = 2.5  # latent pixels (standard deviation of the ball)
MARGIN = 5.0  # the ball's centre stays this far from the borders
START_JITTER = 4.0  # latent pixels: the span of a start place's random shift (render)
# Orthogonal channel vectors (Hadamard rows), so a colour is recovered by projection.
COLOURS = {"red": (1.0, 1.0, 1.0, 1.0), "green": (1.0, -1.0, 1.0, -1.0),
           "blue": (1.0, 1.0, -1.0, -1.0), "yellow": (1.0, -1.0, -1.0, 1.0)}
AMPLITUDE = 4.0  # norm of the channel vector at the ball's centre
DIRECTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}  # (dy, dx)
SPEEDS = {"slowly": 0.5, "quickly": 1.0}  # latent pixels per frame


@dataclass(frozen=True)
class Caption:
    colour: str
    direction: str
    speed: str

    @property
    def text(self) -> str:
        return f"a {self.colour} ball moving {self.direction} {self.speed}"


CAPTIONS = [Caption(*parts) for parts in itertools.product(COLOURS, DIRECTIONS, SPEEDS)]
# Four captions that differ in colour, direction and speed: the harness's default prompts.
PROXY_CAPTIONS = [Caption("red", "left", "slowly"), Caption("green", "right", "quickly"),
                  Caption("blue", "up", "slowly"), Caption("yellow", "down", "quickly")]


@functools.cache
def _caption_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per caption of CAPTIONS: channel vector (norm AMPLITUDE), (dy, dx) direction, speed; made
    once per device (a host-to-device copy waits for the GPU's queue)."""
    return (torch.tensor([COLOURS[c.colour] for c in CAPTIONS], device=device) * AMPLITUDE / 2,  # unit rows
            torch.tensor([DIRECTIONS[c.direction] for c in CAPTIONS], device=device),
            torch.tensor([[SPEEDS[c.speed]] for c in CAPTIONS], device=device))


def render(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latent videos [n, 4, FRAMES, SIZE, SIZE] (float32) of the captions CAPTIONS[ids], start places
    jittered by `generator`, on its device (where `ids` must be): all captions at once, so a
    training batch is made on the GPU without waiting for it."""
    device = generator.device
    colours, steps, speeds = (table[ids] for table in _caption_tables(device))  # [n, 4], [n, 2], [n, 1]
    # Along its motion the ball enters near the border it moves away from, across it near the middle,
    # each shifted within START_JITTER: the caption decides the path up to that shift, as it decides
    # the colour. Where noise hides the path, the model's target is then one ball, not a band smeared
    # over every start place, whose errors eps-training weighs by the tiny signal-to-noise ratio there.
    shift = START_JITTER * torch.rand(steps.shape, generator=generator, device=device)
    entry = torch.where(steps > 0, MARGIN + shift, SIZE - 1 - MARGIN - shift)
    start = torch.where(steps != 0, entry, (SIZE - 1) / 2 + shift - START_JITTER / 2)
    frames = torch.arange(FRAMES, dtype=torch.float32, device=device)
    centres = start[:, None, :] + steps[:, None, :] * speeds[:, None, :] * frames[None, :, None]  # [n, T, 2]
    grid = torch.arange(SIZE, dtype=torch.float32, device=device)
    cy, cx = centres[..., 0, None, None], centres[..., 1, None, None]  # [n, T, 1, 1]
    ball = torch.exp(-((grid[:, None] - cy) ** 2 + (grid[None, :] - cx) ** 2) / (2 * RADIUS ** 2))  # [n, T, H, W]
    return colours[:, :, None, None, None] * ball[:, None]


def read_captions(latents: torch.Tensor) -> list[Caption]:
    """The caption each latent [n, 4, T, H, W] shows best: the colour with the largest projection,
    the direction and speed of the ball's centroid from the first to the last frames."""
    latents = latents.float().cpu()
    colours = torch.tensor(list(COLOURS.values())) / 2  # [4 colours, 4 channels], unit rows
    read = []
    for latent in latents:
        projections = torch.einsum("kc,cthw->kthw", colours, latent)
        best = int(projections.sum(dim=(1, 2, 3)).argmax())
        mass = projections[best].clamp(min=0)  # [T, H, W]
        grid = torch.arange(latent.shape[-1], dtype=torch.float32)
        total = mass.sum(dim=(1, 2)) + 1e-6
        cy = (mass.sum(dim=2) * grid).sum(dim=1) / total
        cx = (mass.sum(dim=1) * grid).sum(dim=1) / total
        quarter = max(1, latent.shape[1] // 4)
        moved = torch.stack([cy[-quarter:].mean() - cy[:quarter].mean(), cx[-quarter:].mean() - cx[:quarter].mean()])
        directions = torch.tensor(list(DIRECTIONS.values()))
        direction = list(DIRECTIONS)[int((directions @ moved).argmax())]
        per_frame = float(moved.norm()) / (latent.shape[1] - quarter)
        speed = min(SPEEDS, key=lambda name: abs(SPEEDS[name] - per_frame))
        read.append(Caption(list(COLOURS)[best], direction, speed))
    return read


def caption_accuracy(latents: torch.Tensor, captions: list[Caption]) -> dict[str, float]:
    """Fraction of latents whose colour, direction and speed read back as captioned."""
    read = read_captions(latents)
    scores = {}
    for field in ("colour", "direction", "speed"):
        scores[field] = sum(getattr(r, field) == getattr(c, field) for r, c in zip(read, captions)) / len(captions)
    return scores
