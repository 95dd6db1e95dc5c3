"""Trains the proxy model (stdit_engine/quality/proxy.py) on the synthetic text-to-video task of
quality/proxy_task.py, on the CPU or a CUDA GPU, and writes its checkpoint (the STDiT's weights,
the text encoder's weights and the architecture it was trained as).

Deterministic and resumable: step k's captions, clean latents, timesteps, noise and caption
dropout come from a generator seeded with (seed, k) on the training device, and everything else
that changes (weights, their EMA, optimiser, loss curve) goes to two resume files next to --out
every --save-every steps and when --max-seconds runs out, so rerunning the same command continues
to the same weights as an uninterrupted run (on the same kind of device: CUDA's random streams and
kernels are not the CPU's). On CUDA: deterministic algorithms (cuBLAS workspace, cuDNN), TF32
matmuls, the model's eager ops (its Triton kernels have no backward).

    python tools/train_proxy.py --device cuda --max-seconds 400 --out stdit_engine/quality/proxy_stdit.pt

The objective is the one the released model was trained with: eps prediction (MSE) at uniform
timesteps of the 1000-step linear-beta schedule, with the caption replaced by the null caption 10%
of the time (what classifier-free guidance needs); --x0-weight-cap weighs each sample's eps error up
where noise hides the data (x0_weights), so that a short run learns what only the caption can say
there (the ball's path), which plain eps MSE weighs by the vanishing signal-to-noise ratio. The variance channels are held at v = 0 (the
midpoint of the learned range) by a small extra MSE, so IDDPM samples with fixed variances. The
learning rate is constant after a warm-up and the checkpoint holds an exponential moving average
of the weights: a run bounded in wall time has no known last step for a decaying schedule to end
at, and the average is a good model wherever the run stops.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from stdit_engine.quality.proxy import PROXY_PRESET, build_proxy_parts, proxy_preset
from stdit_engine.quality.proxy_task import CAPTIONS, render
from stdit_engine.schedulers.base import linear_betas

CAPTION_DROPOUT = 0.1
VARIANCE_WEIGHT = 0.1


def resume_files(out: Path) -> tuple[Path, Path]:
    """(weights, EMA, step and loss curve; optimiser state): apart, so each stays a small file."""
    return out.with_suffix(".resume.pt"), out.with_suffix(".optim.pt")


def batch_at(step: int, seed: int, batch_size: int, alpha_bars: torch.Tensor):
    """Everything random about training step `step`, on alpha_bars' device: caption ids, noisy
    latents, timesteps, noise, which rows lose their caption."""
    device = alpha_bars.device
    generator = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
    ids = torch.randint(len(CAPTIONS), (batch_size,), generator=generator, device=device)
    x0 = render(ids, generator)
    timesteps = torch.randint(len(alpha_bars), (batch_size,), generator=generator, device=device)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    dropped = torch.rand(batch_size, generator=generator, device=device) < CAPTION_DROPOUT
    abar = alpha_bars[timesteps].view(-1, 1, 1, 1, 1)
    return ids, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, timesteps, noise, dropped


def x0_weights(alpha_bar: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-sample weights of the eps error: 1/SNR = (1 - alpha_bar) / alpha_bar clamped to [1, cap].
    An eps error e is an x0 error e / sqrt(SNR): plain eps MSE (cap 1) weighs x0 errors by SNR, next to
    nothing where noise hides the data, which is where only the caption can say what the video is."""
    return ((1 - alpha_bar) / alpha_bar).clamp(1.0, cap)


def learning_rate(step: int, peak: float, warmup: int) -> float:
    return peak * min(1.0, (step + 1) / warmup)


def ema_decay(step: int, target: float) -> float:
    """Short memory at first, so the average is not held back by the random initial weights."""
    return min(target, (1 + step) / (10 + step))


def make_deterministic(device: torch.device) -> None:
    if device.type == "cuda":
        # Must be set before the first cuBLAS call; deterministic cuBLAS needs a fixed workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.set_float32_matmul_precision("high")  # TF32: deterministic too
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    # Not also filling every new tensor with NaN first (a debugging aid of deterministic mode, which
    # costs a write of each activation): no op here reads memory it has not written.
    torch.utils.deterministic.fill_uninitialized_memory = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    stdit = PROXY_PRESET.stdit
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--steps", type=int, default=20000, help="the most steps (--max-seconds may stop it sooner)")
    parser.add_argument("--max-seconds", type=float, help="stop after the step that passes this many seconds "
                                                          "of training (this call's), saving what a rerun resumes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=200, help="steps of linear learning-rate warm-up")
    parser.add_argument("--ema", type=float, default=0.999, help="decay of the weights' moving average")
    parser.add_argument("--hidden", type=int, default=stdit.hidden_size)
    parser.add_argument("--depth", type=int, default=stdit.depth)
    parser.add_argument("--heads", type=int, default=stdit.num_heads)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--x0-weight-cap", type=float, default=1.0,
                        help="weight each sample's eps error by 1/SNR(t) clamped to [1, this]: 1 is plain eps MSE; "
                             "larger weighs the x0 error where noise hides the data (x0_weights)")
    parser.add_argument("--init-from", type=Path, help="a proxy checkpoint whose weights the run starts from "
                                                       "(a second stage; its own command is kept in the new one's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=100, help="steps per loss-curve point and log line")
    parser.add_argument("--out", type=Path, default=Path("stdit_engine/quality/proxy_stdit.pt"))
    parser.add_argument("--copy-to", type=Path, help="also copy the checkpoint, the resume files and a JSON "
                                                     "record of the run into this folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    make_deterministic(device)
    torch.set_num_threads(args.threads)
    # The settings a resume file must have been written with: anything else would not continue the same run.
    settings = {k: getattr(args, k) for k in ("batch_size", "lr", "warmup", "ema", "hidden", "depth", "heads", "seed",
                                               "x0_weight_cap")}
    settings["init_from"] = str(args.init_from) if args.init_from else None
    architecture = dict(hidden_size=args.hidden, depth=args.depth, num_heads=args.heads)

    model, text_encoder = build_proxy_parts(args.seed, proxy_preset(architecture))
    first_stage = None
    if args.init_from:
        first_stage = torch.load(args.init_from, map_location="cpu", weights_only=True)
        if first_stage["architecture"] != architecture:
            raise SystemExit(f"{args.init_from} is a {first_stage['architecture']} model, not {architecture}")
        model.load_state_dict(first_stage["stdit"])
        text_encoder.model.load_state_dict(first_stage["text_encoder"])
    y_all, mask_all = text_encoder.encode([c.text for c in CAPTIONS])
    y_all, mask_all = y_all.clone().to(device), mask_all.clone().to(device)  # out of inference mode
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    y_null = model.y_embedder.y_embedding[None, None]  # [1, 1, L, Cc]
    alpha_bars = torch.from_numpy(linear_betas()).mul(-1).add(1).cumprod(0).float().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    resume, resume_optim = resume_files(args.out)
    start, seconds_before, curve, pending = 0, 0.0, [], (0.0, 0)
    if resume.is_file():
        state = torch.load(resume, map_location=device, weights_only=True)
        if state["settings"] != settings:
            raise SystemExit(f"{resume} was written with {state['settings']}, not {settings}: "
                             f"rerun with those settings or remove it")
        model.load_state_dict(state["stdit"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(torch.load(resume_optim, map_location=device, weights_only=True))
        start, seconds_before, curve, pending = state["step"], state["seconds"], state["curve"], state["pending"]
        print(f"resuming at step {start} ({seconds_before:.0f} s trained before)", flush=True)
    # The loss summed since the last curve point, on the device (no host sync per step), and its step count.
    loss_sum, loss_steps = torch.tensor(pending[0], device=device), pending[1]

    def save_resume(done: int, seconds: float) -> None:
        torch.save({"stdit": model.state_dict(), "ema": ema.state_dict(), "step": done, "seconds": seconds,
                    "curve": curve, "pending": (float(loss_sum), loss_steps), "settings": settings}, resume)
        torch.save(optimizer.state_dict(), resume_optim)

    params, ema_params = list(model.parameters()), list(ema.parameters())
    model.train()
    began = interval_began = time.perf_counter()
    done, timed = start, 0
    for step in range(start, args.steps):
        ids, x_t, timesteps, noise, dropped = batch_at(step, args.seed, args.batch_size, alpha_bars)
        y = torch.where(dropped.view(-1, 1, 1, 1), y_null.expand_as(y_all[ids]), y_all[ids])
        eps, v = model(x_t, timesteps.float(), y, mask_all[ids]).chunk(2, dim=1)
        weights = x0_weights(alpha_bars[timesteps], args.x0_weight_cap)
        loss = (weights * (eps - noise).pow(2).mean(dim=(1, 2, 3, 4))).mean() + VARIANCE_WEIGHT * v.pow(2).mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - ema_decay(step, args.ema))
            loss_sum += loss.detach()
        done, loss_steps, timed = step + 1, loss_steps + 1, timed + 1
        if done % args.log_every == 0:
            curve.append([done, float(loss_sum) / loss_steps])  # waits for the GPU: the times below are true
            now = time.perf_counter()
            print(f"step {done}/{args.steps} loss {curve[-1][1]:.4f} ({1000 * (now - interval_began) / timed:.0f} "
                  f"ms/step, {now - began:.0f} s)", flush=True)
            loss_sum.zero_()
            loss_steps, timed, interval_began = 0, 0, now
        if done % args.save_every == 0:
            save_resume(done, seconds_before + time.perf_counter() - began)
        if args.max_seconds is not None and time.perf_counter() - began >= args.max_seconds:
            break
    seconds = seconds_before + time.perf_counter() - began
    save_resume(done, seconds)

    how = (f"tools/train_proxy.py --device {device.type} --steps {args.steps} --batch-size {args.batch_size} "
           f"--lr {args.lr} --warmup {args.warmup} --ema {args.ema} --hidden {args.hidden} --depth {args.depth} "
           f"--heads {args.heads} --seed {args.seed} --x0-weight-cap {args.x0_weight_cap}" + (f" --init-from {args.init_from}" if args.init_from else ""))
    torch.save({"stdit": {k: v.cpu() for k, v in ema.state_dict().items()},
                "text_encoder": text_encoder.model.state_dict(), "architecture": architecture,
                "how": f"{how} ({done} steps, moving average of the weights)"
                       + (f"; {args.init_from.name} was: {first_stage['how']}" if first_stage else "")}, args.out)
    if done < args.steps:
        print(f"stopped by --max-seconds after step {done} of {args.steps} ({seconds:.0f} s trained): {args.out} "
              f"holds the moving average so far; rerun the same command to continue from {resume}", flush=True)
    else:
        print(f"trained {done} steps in {seconds:.0f} s; wrote {args.out}", flush=True)
    if args.copy_to:
        copy_run(args, device, done, seconds, curve, how)
    return 0


def copy_run(args: argparse.Namespace, device: torch.device, done: int, seconds: float, curve: list, how: str) -> None:
    """The checkpoint, the resume files and train_proxy.json (what was run, the loss curve) into --copy-to."""
    args.copy_to.mkdir(parents=True, exist_ok=True)
    for path in (args.out, *resume_files(args.out)):
        shutil.copy2(path, args.copy_to / path.name)
    record = {"command": how, "steps_done": done, "steps": args.steps, "completed": done >= args.steps,
              "seconds": round(seconds, 1), "max_seconds": args.max_seconds,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "loss_curve": curve,
              "files_mib": {p.name: round(p.stat().st_size / 2**20, 2) for p in (args.out, *resume_files(args.out))}}
    (args.copy_to / "train_proxy.json").write_text(json.dumps(record, indent=1))
    print(f"copied the checkpoint, resume files and train_proxy.json to {args.copy_to}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
