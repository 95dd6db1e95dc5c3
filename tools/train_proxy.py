"""Trains the proxy model (stdit_engine/quality/proxy.py) on the synthetic text-to-video task of
quality/proxy_task.py, on the CPU, and writes its checkpoint (STDiT + the text encoder's weights).

Deterministic and resumable: step k's batch, timesteps, noise and caption dropout come from a
generator seeded with (seed, k), and a resume file (model, optimiser, step) is written every
`--save-every` steps, so an interrupted run continues to the same weights.

    nice -n 10 python tools/train_proxy.py --steps 1500 --out stdit_engine/quality/proxy_stdit.pt

The objective is the one the released model was trained with: eps prediction (MSE) at uniform
timesteps of the 1000-step linear-beta schedule, with the caption replaced by the null caption 10%
of the time (what classifier-free guidance needs). The variance channels are held at v = 0 (the
midpoint of the learned range) by a small extra MSE, so IDDPM samples with fixed variances.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from stdit_engine.quality.proxy import build_proxy_parts
from stdit_engine.quality.proxy_task import CAPTIONS, render
from stdit_engine.schedulers.base import linear_betas

CAPTION_DROPOUT = 0.1
VARIANCE_WEIGHT = 0.1


def batch_at(step: int, seed: int, batch_size: int, alpha_bars: torch.Tensor):
    """Everything random about training step `step`: caption ids, clean latents, timesteps, noise,
    which rows lose their caption."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ids = torch.randint(len(CAPTIONS), (batch_size,), generator=generator)
    x0 = render([CAPTIONS[i] for i in ids], generator)
    timesteps = torch.randint(len(alpha_bars), (batch_size,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    dropped = torch.rand(batch_size, generator=generator) < CAPTION_DROPOUT
    abar = alpha_bars[timesteps].view(-1, 1, 1, 1, 1)
    return ids, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, timesteps, noise, dropped


def learning_rate(step: int, steps: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("stdit_engine/quality/proxy_stdit.pt"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    resume = args.out.with_suffix(".resume.pt")

    model, text_encoder = build_proxy_parts(args.seed)
    y_all, mask_all = text_encoder.encode([c.text for c in CAPTIONS])
    y_all, mask_all = y_all.clone(), mask_all.clone()  # out of inference mode, to train through
    y_null = model.y_embedder.y_embedding[None]  # [1, L, Cc]
    alpha_bars = torch.from_numpy(linear_betas()).mul(-1).add(1).cumprod(0).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start = 0
    if resume.is_file():
        state = torch.load(resume, weights_only=True)
        model.load_state_dict(state["stdit"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        print(f"resuming at step {start}")

    model.train()
    began, running = time.time(), None
    for step in range(start, args.steps):
        ids, x_t, timesteps, noise, dropped = batch_at(step, args.seed, args.batch_size, alpha_bars)
        y = torch.where(dropped.view(-1, 1, 1, 1), y_null[:, None].expand_as(y_all[ids]), y_all[ids])
        out = model(x_t, timesteps.float(), y, mask_all[ids])
        eps, v = out.chunk(2, dim=1)
        loss = torch.nn.functional.mse_loss(eps, noise) + VARIANCE_WEIGHT * v.pow(2).mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % 10 == 0:
            print(f"step {step + 1}/{args.steps} loss {running:.4f} ({time.time() - began:.0f} s)", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            torch.save({"stdit": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}, resume)

    state = {
        "stdit": model.state_dict(),
        "text_encoder": text_encoder.model.state_dict(),
        "how": f"tools/train_proxy.py --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
               f"--seed {args.seed}",
    }
    torch.save(state, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
