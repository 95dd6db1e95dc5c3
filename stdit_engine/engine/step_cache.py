"""Step caching: on some denoising steps, reuse work that barely changes from one step to the next.

Two strategies, both per `generate()` call:

- "residual": a step either runs the whole block stack, or adds the residual the stack added at
  the last step that ran it (output of the last block minus the embedded input) to this step's
  embedded input and goes straight to the final layer. Which steps skip follows published residual
  caches in what a skip errs (the change of the first block's modulated input, relative L1 from the
  previous step, rescaled by a per-model polynomial, accumulated since the blocks last ran), and
  weights it by what an error at that step does to the result: the step's sensitivity, how far
  reusing at that step alone moves the final latent (the calibration measures it). Their product
  estimates each skip's cost in relative L2 of the final latent, and the costs of a schedule add
  (schedule_cost); `threshold` is the most the whole schedule may cost, spent on the cheapest
  skips first. The first and last steps always run the blocks. The published rule on the change
  alone skips wherever the curve is low, which on some checkpoints is the first steps, whose errors
  the sampler carries into every later one (BENCHMARKS.md, step cache).
- "attention": the spatial, temporal and cross attention outputs (after their projections) of
  every block are computed on some steps and reused on the others, each kind over its own range of
  steps with its own interval (`AttentionBroadcast`).

The step loop is sync-free and replayed from CUDA graphs, so a decision that reads the latent on
the host at every step is not an option. Here the decisions are a static schedule, a `CachePlan`
made before the loop: the residual cache applies its rule to the change curve measured, per
sampler and step count, by a calibration of the loaded checkpoint (engine/cache_calibration.py),
not to the live latent. Each kind of step (`StepVariant`: what it reuses, what it stores for the
next steps) is then its own captured graph, and the host picks the graph per step from the plan;
a skipped step runs only the kernels it needs. The plan depends only on the call's settings,
never on the prompts or the latent, so a request's skips cannot depend on its batchmates, and
with settings that never reuse anything every step runs the uncached forward unchanged.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..errors import ConfigError
from ..models.stdit import STDiT
from ..options import CACHE_MODES
from ..values import is_number
from .cache_defaults import cache_defaults

if TYPE_CHECKING:
    from .cache_calibration import CacheCalibration

RESIDUAL, ATTENTION = CACHE_MODES
ATTENTION_KINDS = ("spatial", "temporal", "cross")


@dataclass(frozen=True)
class StepVariant:
    """One kind of step: the stored outputs it reuses ("residual" or attention kinds) and those it
    computes and stores for the steps after it."""

    reuse: frozenset = frozenset()
    record: frozenset = frozenset()


FULL = StepVariant()  # the uncached forward


@dataclass(frozen=True)
class BroadcastRange:
    """Where and how often one kind of attention is computed: over the steps whose position in the
    run (0 = the first step, 1 = the last) lies in [start, stop), it is computed every `interval`
    steps and reused in between; elsewhere it is computed at every step. interval 1: never reused."""

    interval: int
    start: float = 0.1
    stop: float = 0.6

    def __post_init__(self):
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ConfigError(f"a broadcast interval must be an integer >= 1 (1: never reuse), got {self.interval!r}")
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ConfigError(f"a broadcast range needs 0 <= start <= stop <= 1 (fractions of the steps), "
                              f"got start={self.start!r}, stop={self.stop!r}")


@dataclass(frozen=True)
class AttentionBroadcast:
    """The attention cache's setting: one BroadcastRange per attention kind; a kind not given is
    computed at every step. generate()'s default depends on the sampler (default_broadcast)."""

    spatial: BroadcastRange = field(default_factory=lambda: BroadcastRange(1))
    temporal: BroadcastRange = field(default_factory=lambda: BroadcastRange(1))
    cross: BroadcastRange = field(default_factory=lambda: BroadcastRange(1))

    @classmethod
    def uniform(cls, intervals: Sequence[int], start: float = 0.1, stop: float = 0.6) -> "AttentionBroadcast":
        """(spatial, temporal, cross) intervals over one common range."""
        if len(intervals) != len(ATTENTION_KINDS):
            raise ConfigError(f"give one broadcast interval per attention kind ({', '.join(ATTENTION_KINDS)}), "
                              f"got {list(intervals)}")
        return cls(*(BroadcastRange(int(k), start, stop) for k in intervals))


@dataclass(frozen=True)
class CachePlan:
    """The static schedule of one call: the StepVariant of every model evaluation, in run order."""

    mode: str
    variants: tuple[StepVariant, ...]

    @property
    def recorded(self) -> frozenset:
        """What the call ever stores, hence the buffers it needs."""
        return frozenset().union(*(v.record for v in self.variants))

    @property
    def graph_key(self) -> tuple:
        """What the captured graphs of this plan share (their buffers): part of the graph cache key."""
        return self.mode, self.recorded

    def reused(self, what: str) -> int:
        """Evaluations that reuse `what` ("residual" or an attention kind) instead of computing it."""
        return sum(what in v.reuse for v in self.variants)

    def forwards(self, model: STDiT, model_input: torch.Tensor) -> Callable[[StepVariant], Callable]:
        """variant -> the STDiT forward (forward_embedded's signature) that runs it, over fresh
        buffers for a model input shaped like `model_input` (the rows and frames this process runs)."""
        return functools.partial(variant_forward, model, CacheBuffers(self, model, model_input))


def with_records(mode: str, reuse: Sequence[frozenset]) -> CachePlan:
    """The plan whose step i reuses reuse[i]: each step also stores what it computes and step i+1 reuses."""
    upcoming = list(reuse[1:]) + [frozenset()]
    return CachePlan(mode, tuple(StepVariant(now, nxt - now) for now, nxt in zip(reuse, upcoming)))


def residual_plan(rescaled_changes: Sequence[float], sensitivities: Sequence[float], threshold: float) -> CachePlan:
    """The residual cache's rule (module docstring) over one change and one sensitivity per
    evaluation: add, one at a time, the skip that adds least to the schedule's estimated cost
    (schedule_cost), while the total stays below `threshold`. The first and last evaluations run."""
    if len(rescaled_changes) != len(sensitivities):
        raise ValueError("one change and one sensitivity per evaluation")
    evaluations = len(rescaled_changes)
    skipped, total = set(), 0.0
    while True:
        cheapest = min(((_added_cost(rescaled_changes, sensitivities, skipped, i), i)
                        for i in range(1, evaluations - 1) if i not in skipped), default=None)
        if cheapest is None or total + cheapest[0] >= threshold:
            break
        total += cheapest[0]
        skipped.add(cheapest[1])
    return with_records(RESIDUAL, [frozenset({RESIDUAL}) if i in skipped else frozenset() for i in range(evaluations)])


def schedule_cost(rescaled_changes: Sequence[float], sensitivities: Sequence[float], skipped: set,
                  start: int = 0, stop: int | None = None) -> float:
    """The estimated relative L2 change of the final latent when the evaluations in `skipped` (of
    start..stop, and start runs the blocks) reuse the residual: the sum of each skip's cost. A skip
    errs as much as the input changed since the blocks last ran; its step's sensitivity was
    measured with one step's change, so its cost is the sensitivity times that change in units of
    the step's own. Errors of different steps add, to first order."""
    accumulated, total = 0.0, 0.0
    for i in range(start, len(rescaled_changes) if stop is None else stop):
        change = rescaled_changes[i]
        accumulated += change
        if i not in skipped:
            accumulated = 0.0
        elif accumulated <= change:  # one step's change (or none) since the blocks ran: as measured
            total += sensitivities[i]
        else:  # a step that changes nothing after some that changed: its own change says nothing
            total += sensitivities[i] * accumulated / change if change > 0 else math.inf
    return total


def _added_cost(changes: Sequence[float], sensitivities: Sequence[float], skipped: set, step: int) -> float:
    """What skipping `step` adds to schedule_cost: only the run of skips around it changes, from
    the evaluation before it that runs the blocks to the last skip after it."""
    start = max(i for i in range(step) if i not in skipped)
    stop = step + 1
    while stop in skipped:
        stop += 1
    return (schedule_cost(changes, sensitivities, skipped | {step}, start, stop)
            - schedule_cost(changes, sensitivities, skipped, start, stop))


def one_reuse_plan(step: int, evaluations: int) -> CachePlan:
    """Evaluation `step` alone reuses the residual of the one before (the calibration's sensitivity runs)."""
    return with_records(RESIDUAL, [frozenset({RESIDUAL}) if i == step else frozenset() for i in range(evaluations)])


def attention_plan(broadcast: AttentionBroadcast, evaluations: int) -> CachePlan:
    """Reuse each attention kind inside its range except every interval-th step; the first and
    last steps compute everything."""
    reuse = [set() for _ in range(evaluations)]
    for kind in ATTENTION_KINDS:
        span = getattr(broadcast, kind)
        inside = [i for i in range(1, evaluations - 1) if span.start <= i / evaluations < span.stop]
        for offset, i in enumerate(inside):
            if offset % span.interval:
                reuse[i].add(kind)
    return with_records(ATTENTION, [frozenset(kinds) for kinds in reuse])


def make_plan(cache: str | None, *, sampler: str, evaluations: int, threshold: float | None = None,
              broadcast: AttentionBroadcast | None = None, calibration: CacheCalibration | None = None
              ) -> CachePlan | None:
    """The plan of one call from generate()'s cache arguments (None: no cache); a threshold or
    broadcast not given is the sampler's default (engine/cache_defaults.py)."""
    if cache is None:
        if threshold is not None or broadcast is not None:
            raise ConfigError("cache_threshold / cache_broadcast were given without a cache: pass cache='residual' "
                              "or cache='attention'")
        return None
    if cache == ATTENTION:
        if threshold is not None:
            raise ConfigError("cache_threshold belongs to cache='residual'; the attention cache is set with "
                              "cache_broadcast=AttentionBroadcast(...)")
        if broadcast is not None and not isinstance(broadcast, AttentionBroadcast):
            raise ConfigError(f"cache_broadcast must be an AttentionBroadcast(...), got {type(broadcast).__name__} "
                              f"{broadcast!r}")
        return attention_plan(broadcast or default_broadcast(sampler, evaluations), evaluations)
    if cache != RESIDUAL:
        raise ConfigError(f"unknown cache {cache!r}; choose one of: {', '.join(CACHE_MODES)} (or None)")
    if broadcast is not None:
        raise ConfigError("cache_broadcast belongs to cache='attention'; the residual cache is set with cache_threshold")
    threshold = cache_defaults(sampler, evaluations).residual_threshold if threshold is None else threshold
    if not is_number(threshold) or not threshold >= 0:
        raise ConfigError(f"cache_threshold must be a number >= 0 (0: never skip), got {threshold!r}")
    if calibration is None:
        raise ConfigError("cache='residual' needs the change curve of this checkpoint: run `stdit-engine "
                          "calibrate-cache` once and load its file with from_pretrained(..., cache_calibration=PATH)")
    return residual_plan(calibration.rescaled_changes(sampler, evaluations),
                         calibration.sensitivity(sampler, evaluations), threshold)


def default_broadcast(sampler: str, evaluations: int) -> AttentionBroadcast:
    """The attention cache's setting when the call gives none (engine/cache_defaults.py)."""
    defaults = cache_defaults(sampler, evaluations)
    return AttentionBroadcast.uniform(defaults.attention_intervals, *defaults.attention_range)


def recorded_at_most(cache: str) -> frozenset:
    """What a plan of mode `cache` can store: the residual, or all three attention kinds."""
    if cache not in CACHE_MODES:
        raise ConfigError(f"unknown cache {cache!r}; choose one of: {', '.join(CACHE_MODES)} (or None)")
    return frozenset({RESIDUAL}) if cache == RESIDUAL else frozenset(ATTENTION_KINDS)


def buffer_layout(recorded: frozenset, rows: int, tokens: int, hidden_size: int, depth: int,
                  dtype: torch.dtype) -> dict:
    """key -> (shape, dtype) of the buffers that storing `recorded` needs, for a model input of
    `rows` rows of `tokens` tokens: the block stack's residual in float32 (the difference of two
    model-dtype tensors, kept exact), and per block each recorded attention kind's output."""
    shape = (rows, tokens, hidden_size)
    layout = {RESIDUAL: (shape, torch.float32)} if RESIDUAL in recorded else {}
    layout.update({(block, kind): (shape, dtype) for block in range(depth) for kind in ATTENTION_KINDS
                   if kind in recorded})
    return layout


def buffer_bytes(layout: dict) -> int:
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())


class CacheBuffers:
    """What a call's cached steps read (buffer_layout). Allocated before any graph is captured,
    outside its memory pool; a captured graph keeps them as long as it is kept (graph_cache.py)."""

    def __init__(self, plan: CachePlan, model: STDiT, model_input: torch.Tensor):
        rows, frames = model_input.shape[0], model_input.shape[2] // model.patch_size[0]
        layout = buffer_layout(plan.recorded, rows, frames * model.grid[1] * model.grid[2], model.hidden_size,
                               len(model.blocks), model.dtype)
        buffers = {key: torch.zeros(shape, dtype=dtype, device=model_input.device)
                   for key, (shape, dtype) in layout.items()}
        self.residual = buffers.pop(RESIDUAL, None)
        self.attention = buffers  # (block, kind) -> that block's stored output of that kind


def variant_forward(model: STDiT, buffers: CacheBuffers, variant: StepVariant) -> Callable:
    if variant == FULL:
        return model.forward_embedded
    if RESIDUAL in variant.reuse:
        return functools.partial(_reuse_residual, model, buffers.residual)
    if RESIDUAL in variant.record:
        return functools.partial(_record_residual, model, buffers.residual)
    return functools.partial(model.forward_embedded, attend=functools.partial(_attend, variant, buffers.attention))


def _record_residual(model: STDiT, residual: torch.Tensor, x, temb, t0, caption_kv, kv_lengths) -> torch.Tensor:
    """forward_embedded, storing what the blocks added to the embedded input. The final layer still
    takes the last block's output as forward_embedded does, so the output is unchanged."""
    h0, grid = model.embed_tokens(x)
    h, pending = model.run_blocks(h0, t0, caption_kv, kv_lengths, grid)
    residual.copy_(model.ops.gated_residual(h, *pending)).sub_(h0)
    return model.decode_tokens(h, temb, pending)


def _reuse_residual(model: STDiT, residual: torch.Tensor, x, temb, t0, caption_kv, kv_lengths) -> torch.Tensor:
    """The embedded input plus the stored residual, through the final layer: no block runs."""
    h0, _ = model.embed_tokens(x)
    return model.decode_tokens((residual + h0).to(h0.dtype), temb)


def _attend(variant: StepVariant, stored: dict, block: int, kind: str, compute: Callable) -> torch.Tensor:
    if kind in variant.reuse:
        return stored[block, kind]
    out = compute()
    if kind in variant.record:
        stored[block, kind].copy_(out)
    return out
