"""The guided denoising loop of `Engine.generate()`.

Per call, the work that does not change between steps is done once: the caption projection and
every block's caption K/V, the timestep embeddings of all steps, the sampler's coefficient table.
A step is then the STDiT forward on the guidance batch, the guidance mix and the sampler's update
(schedulers/base.py). On CUDA that step is captured once in a CUDA graph (per batch size, dtype and
sampler kind, reused across calls, the least recently used dropped beyond a few: graph_cache.py)
and replayed; the inputs that change per step or per call (the cfg scale too) are copied into its
static buffers. The engine's denoise lock makes one call at a time use them (stage_locks.py).
The noise is drawn outside the graph by `Sampler.run`, so the reference's RNG protocol holds
unchanged. A step cache (step_cache.py) makes several kinds of step, each its own graph over the
same static buffers.
"""
from __future__ import annotations

import functools
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Hashable

import torch

from ..errors import ConfigError
from ..kernels.triton_support import compile_in_parallel
from ..models.stdit import STDiT
from ..schedulers.base import Sampler, guide, scale_dtype
from .graph_cache import MAX_CACHED_GRAPHS, GraphCache
from .step_cache import CachePlan

logger = logging.getLogger(__name__)


class GuidanceBatch:
    """Which rows of the guidance batch (latents [x; x] under captions [y; y_null]) this process
    runs the model on, and how the whole output is assembled from them: here, all rows in one
    process. parallel/guidance.py splits the rows (and frames) over ranks."""

    def captions(self, y: torch.Tensor, y_null: torch.Tensor) -> torch.Tensor:
        return torch.cat([y, y_null.expand_as(y).to(y.dtype)])

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x])

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        """The model output of the whole guidance batch [2n, ...] from this process's part."""
        return out


WHOLE_BATCH = GuidanceBatch()


@dataclass
class StepInputs:
    """What one step reads besides the latent and the noise."""

    temb: torch.Tensor  # [rows, C]; rows = 2n, or this rank's part of them
    t0: torch.Tensor  # [rows, 6C]
    caption_kv: list  # per block (K, V), [rows, H, L, D]
    kv_lengths: torch.Tensor  # [rows]
    coefs: torch.Tensor  # [K]: the sampler's coefficient row of this step
    memory: torch.Tensor  # what the sampler carries between steps (updated in place)
    cfg_scale: float | torch.Tensor  # a float, or in a graph a 0-dim tensor (schedulers/base.py scale_by)


def guided_step(model: STDiT, sampler: Sampler, x: torch.Tensor, noise: torch.Tensor,
                inputs: StepInputs, batch: GuidanceBatch = WHOLE_BATCH, forward: Callable | None = None) -> torch.Tensor:
    """x after one step: the forward on the guidance batch [x; x], the guidance mix, the sampler's update.
    `forward`: in place of model.forward_embedded (a step cache's)."""
    forward = forward or model.forward_embedded
    out = batch.gather(forward(batch.latents(x), inputs.temb, inputs.t0, inputs.caption_kv, inputs.kv_lengths))
    guided = guide(out, inputs.cfg_scale, sampler.guidance_channels)
    return sampler.update(inputs.coefs, x, guided, noise, inputs.memory)


@functools.lru_cache(maxsize=None)
def warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream of every capture's warm-up on `device`, one for the process: cuBLAS keeps a
    workspace for each stream that ran a GEMM, as long as the process lives, so a new stream per
    capture (placements that drop their graphs capture on every call) would add one each call,
    up to the size of torch's stream pool."""
    return torch.cuda.Stream(device)


class GraphedStep:
    """`guided_step` captured once per variant of the forward (one, unless a step cache varies it),
    with static buffers; reusable for any call of the same shapes, guided channels and kind of
    sampler (its update's kernels; its per-step numbers are the coefficient row). The cfg scale is
    an input (a device scalar), so calls that vary it or the number of steps share one graph. The
    variants share the static inputs (the sampler's memory among them) and one memory pool: they
    never run at the same time, and a step's output is read (copied in as the next step's input)
    before the next replay, as with a single graph."""

    def __init__(self, model: STDiT, sampler: Sampler, x: torch.Tensor, noise: torch.Tensor,
                 inputs: StepInputs, batch: GuidanceBatch, forward_for: Callable[[Hashable], Callable] | None = None):
        # Static copies of everything the step reads: replays read whatever these hold.
        self.x = x.float().clone()  # the latent is float32 after the first update, as in the reference
        self.noise = noise.float().clone()
        self.inputs = StepInputs(inputs.temb.clone(), inputs.t0.clone(),
                                 [(k.clone(), v.clone()) for k, v in inputs.caption_kv],
                                 inputs.kv_lengths.clone(), inputs.coefs.clone(), inputs.memory.clone(),
                                 torch.full((), inputs.cfg_scale, dtype=scale_dtype(model.dtype), device=x.device))
        self.model, self.sampler, self.batch = model, sampler, batch
        self.forward_for = forward_for or (lambda variant: model.forward_embedded)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[Hashable, torch.Tensor] = {}

    def prepare(self, variants, parts: dict[str, float] | None = None) -> None:
        """Captures the variants not captured yet (before a call's loop: capture syncs), adding the
        seconds it took to `parts`: "compile", the pass that compiles the step's Triton kernels (or
        finds them in Triton's caches), and "capture", the eager step and the capture after it."""
        for variant in variants:
            if variant not in self.graphs:
                self._capture(variant, {} if parts is None else parts)

    def _capture(self, variant: Hashable, parts: dict[str, float]) -> None:
        forward = self.forward_for(variant)
        begin = time.perf_counter()

        def step() -> torch.Tensor:
            return guided_step(self.model, self.sampler, self.x, self.noise, self.inputs, self.batch, forward)

        side = warmup_stream(self.x.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: compilation, lazy init, workspaces
            # Twice: cuBLAS and SDPA pick and cache their kernels on first use. The first pass only
            # compiles the Triton kernels, all at once (their outputs stay unwritten: values do not
            # matter here), so that a process's first call does not compile them one by one.
            try:
                with compile_in_parallel():
                    step()
            except Exception as err:  # an optimisation only: the pass below compiles what this did not
                logger.warning("compiling the step's Triton kernels in parallel failed (%s); they compile as "
                               "they are first launched", err)
            side.synchronize()  # so that the compiling pass's time is its own
            compiled = time.perf_counter()
            step()
        torch.cuda.current_stream().wait_stream(side)
        # Hand the warm-up's cached blocks back, so they and the graph's pool don't add up.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        # Thread-local: other threads' calls (another request's encode or decode) may use the
        # device during the capture; only this thread is barred from what a capture forbids.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self.outputs[variant] = step()
        self.graphs[variant] = graph
        parts["compile"] = parts.get("compile", 0.0) + compiled - begin
        parts["capture"] = parts.get("capture", 0.0) + time.perf_counter() - compiled

    def set_call_inputs(self, caption_kv: list, kv_lengths: torch.Tensor, cfg_scale: float) -> None:
        """The per-call inputs: every block's caption K/V, the caption lengths and the cfg scale;
        the sampler's memory starts from zeros."""
        for (k_static, v_static), (k, v) in zip(self.inputs.caption_kv, caption_kv):
            k_static.copy_(k)
            v_static.copy_(v)
        self.inputs.kv_lengths.copy_(kv_lengths)
        self.inputs.cfg_scale.fill_(cfg_scale)
        self.inputs.memory.zero_()

    def __call__(self, x: torch.Tensor, noise: torch.Tensor, temb, t0, coefs, variant: Hashable = None) -> torch.Tensor:
        self.x.copy_(x)
        self.noise.copy_(noise)
        self.inputs.temb.copy_(temb)
        self.inputs.t0.copy_(t0)
        self.inputs.coefs.copy_(coefs)
        self.graphs[variant].replay()
        return self.outputs[variant]


class GuidedDenoiser:
    def __init__(self, model: STDiT, use_cuda_graphs: bool = True, batch: GuidanceBatch = WHOLE_BATCH,
                 max_graphs: int = MAX_CACHED_GRAPHS):
        self.model = model
        self.use_cuda_graphs = use_cuda_graphs
        self.batch = batch
        self._graphs = GraphCache(max_graphs)

    def clear(self) -> None:
        """Drops the captured graphs (and their memory), e.g. after the model's weights moved."""
        self._graphs.clear()

    @torch.inference_mode()
    def sample(self, sampler: Sampler, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
               y_null: torch.Tensor, generator: torch.Generator | None = None, progress=False,
               noise_fn=None, monitor=None, cache: CachePlan | None = None,
               parts: dict[str, float] | None = None) -> torch.Tensor:
        """Same contract and result as `sampler.sample(model, ...)`, faster; `noise_fn` and `monitor` as in
        `Sampler.run`. `cache`: the call's step cache plan; its buffers belong to the call (to its
        graphs, which the call holds alone under the denoise lock). `parts`: where a capture adds
        its seconds (GraphedStep.prepare), for the stage report."""
        model = self.model
        caption_kv, kv_lengths = model.embed_caption(self.batch.captions(y, y_null), mask)
        rows = kv_lengths.shape[0]
        temb_all, t0_all = model.embed_timestep(sampler.model_timesteps(z.device))  # [steps, C], [steps, 6C]
        coefs = sampler.coefficient_table(z.device)
        memory = sampler.new_memory(z)

        def inputs_at(index: int) -> StepInputs:
            return StepInputs(temb_all[index].expand(rows, -1), t0_all[index].expand(rows, -1),
                              caption_kv, kv_lengths, coefs[index], memory, sampler.cfg_scale)

        if cache is not None and len(cache.variants) != sampler.num_steps:
            raise ConfigError(f"the step cache plan covers {len(cache.variants)} steps, the sampler runs {sampler.num_steps}")
        if cache is not None and not cache.recorded:
            cache = None  # nothing is ever reused: the uncached step (and its graph) is the plan
        # The step cache's plan says which variant of the forward each step runs.
        variants = [None] if cache is None else cache.variants
        evaluations = itertools.repeat(None) if cache is None else iter(variants)

        def forwards():
            return None if cache is None else cache.forwards(model, self.batch.latents(z))

        if not (self.use_cuda_graphs and z.device.type == "cuda"):
            forward_for = forwards()

            def step(x: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
                variant = next(evaluations)
                forward = None if forward_for is None else forward_for(variant)
                return guided_step(model, sampler, x, noise, inputs_at(index), self.batch, forward)

            return sampler.run(step, z, generator=generator, progress=progress, noise_fn=noise_fn, monitor=monitor)

        key = (tuple(z.shape), model.dtype, tuple(caption_kv[0][0].shape), sampler.guidance_channels, sampler.name,
               None if cache is None else cache.graph_key)
        graphed = self._graphs.get(key, lambda: GraphedStep(model, sampler, z, z, inputs_at(0), self.batch, forwards()))
        graphed.prepare(dict.fromkeys(variants), parts)
        graphed.set_call_inputs(caption_kv, kv_lengths, sampler.cfg_scale)

        def replay(x: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
            inputs = inputs_at(index)
            return graphed(x, noise, inputs.temb, inputs.t0, inputs.coefs, next(evaluations))

        # The result lives in the graph's static buffer: hand out a copy that the next call won't overwrite.
        return sampler.run(replay, z, generator=generator, progress=progress, noise_fn=noise_fn,
                           monitor=monitor).clone()
