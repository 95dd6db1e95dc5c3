"""The public entry point: `Engine` loads the three models of a preset and generates videos."""
from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from ..configs import Preset, get_preset
from ..errors import ConfigError, SamplingError
from ..models.caption import clean_prompt, warn_if_erased
from ..models.checkpoint import build_stdit
from ..models.hub import resolve_model_file
from ..models.stdit import STDiT
from ..models.text_encoder import TextEncoder
from ..models.vae import VideoVAE
from ..parallel import ParallelPlan, decode_split, encode_on_first, parallel_denoiser
from ..schedulers import Sampler, make_sampler
from .arguments import check_generate_arguments, check_prompts, check_seed, explain_nonfinite
from .cancel import CancelToken, check_cancel_token
from .cache_calibration import CacheCalibration
from .denoise import GuidedDenoiser
from .memory import CallStats, StageStats, decode_chunk, measure_stage
from .placement import Placement
from .placement_choice import check_step_cache_memory
from .plan import RuntimePlan, resolve_plan
from .progress import ProgressBar, ProgressFn, StepMonitor, progress_report
from .prompt_cache import PromptEmbeddingCache
from .seeds import PromptNoise, SharedNoise, call_noise
from .stage_locks import StageLocks
from .step_cache import AttentionBroadcast, CachePlan, make_plan
from .video import Video


# What `Engine.warmup` generates from: any prompt does. Its embedding is not stored in the prompt
# cache (Engine.warmup says why).
WARMUP_PROMPT = "a sea turtle swimming over a coral reef"


class Engine:
    """Open-Sora v1.0 text-to-video: T5 text encoder -> STDiT denoiser (IDDPM) -> VAE decoder.

    Thread safety: `generate()` may be called from several threads at once, and each call returns
    exactly what it returns alone. Shared between calls are the three models' weights (read only),
    the T5 tokenizer, the placement of each model (moved onto the device for its stage and back),
    the prompt-embedding cache (locked by itself), and the denoiser's CUDA-graph cache with its
    static buffers (written and replayed each step). Each stage (encode, denoise, decode) runs under
    a lock (engine/stage_locks.py) that guards its model's placement and state, the denoise lock the
    graph cache too: with placement "resident", one lock per stage, so one call's denoise runs beside
    another's encode or decode; with placements that move weights (lean, offload, sequential), one
    lock for all stages, so one stage runs at a time as their memory plan assumes. Everything else a
    call mutates is its own: latents, noise generators, the progress and cancellation monitor, its
    stage stats (published to `last_stats` whole when it ends; on CUDA a stage's peak memory is the
    device's, so it counts what concurrent calls hold too). A parallel engine holds all stages for
    the whole call, so its collectives never interleave with another call's; its ranks must still
    receive the same calls in the same order (drive it from one thread). Not guarded: `use_artifact()`
    and changing `denoiser` replace shared state; do that between calls.
    """

    def __init__(self, plan: RuntimePlan, stdit: STDiT, text_encoder: TextEncoder, vae: VideoVAE,
                 random_weights: bool = False):
        self.plan = plan  # every load-time choice, resolved (engine/plan.py)
        self.stdit = stdit.eval()
        self.text_encoder = text_encoder
        self.vae = vae
        self.random_weights = random_weights
        device, parallel, cuda_graphs, placement = plan.device, plan.parallel, plan.cuda_graphs, plan.placement
        models = {"encode": text_encoder.model, "denoise": self.stdit, "decode": vae.model}
        if parallel is not None and not parallel.is_first:
            # T5 runs on rank 0 only (the others receive its embeddings): it stays off this device.
            del models["encode"]
            text_encoder.model.to("cpu")
        self.placement = Placement(placement, device, models=models,
                                   streamed={"encode": text_encoder.model.encoder.block})
        self.placement.reason = plan.placement_reason
        self.denoiser = (GuidedDenoiser(self.stdit, use_cuda_graphs=cuda_graphs) if parallel is None
                         else parallel_denoiser(parallel, self.stdit, use_cuda_graphs=cuda_graphs))
        self._locks = StageLocks(separate=placement == "resident" and parallel is None)
        self.last_stats = CallStats(self._title())
        # What loading cost, stage by stage (the constructors' and `warmup()`'s), apart from any call's.
        self.load_stats = CallStats(f"loading {self._title()}")
        self.prompt_cache = PromptEmbeddingCache()  # capacity 0 turns it off
        self._warming_up = threading.local()  # `active` in the thread running warmup(): store no embedding
        self.cache_calibration: CacheCalibration | None = None  # generate(cache="residual") needs it

    @property
    def preset(self) -> Preset:
        return self.plan.preset

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def parallel(self) -> ParallelPlan | None:
        """How the ranks share the work; None: this process does all of it."""
        return self.plan.parallel

    @property
    def dtype(self) -> torch.dtype:
        return self.stdit.dtype

    @property
    def _models(self) -> tuple[torch.nn.Module, ...]:
        """The three models, whose weights on the device count towards each stage's peak."""
        return self.text_encoder.model, self.stdit, self.vae.model

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, preset: str | Preset, *, stdit: str | None = None, t5: str | None = None,
                        vae: str | None = None, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, t5_dtype: torch.dtype = torch.float32,
                        backend: str = "auto", cuda_graphs: bool = True, placement: str = "auto",
                        parallel: str = "auto", fp8: bool = False,
                        cache_calibration: str | Path | None = None, step_cache: str | None = None,
                        warmup: bool | Sequence[int] | None = None) -> "Engine":
        """Loads each part from a local path or a hub id; defaults are the released weights of SPEC section 1.

        `stdit` is a .pth/.safetensors file or a hub repo id (the preset's file is taken from it).
        `cuda_graphs`: replay each denoising step from a CUDA graph (on CUDA devices).
        `placement`: "resident", "lean", "offload", "sequential" or "auto" (engine/placement.py).
        `parallel`: inside an initialised process group, how the ranks share the work: "cfg", "dsp",
        "cfg+dsp" or "auto" (parallel/plan.py); every rank calls this, and uses cuda:LOCAL_RANK.
        `fp8`: the STDiT block linears in FP8 (Ada / Hopper GPUs; models/fp8.py): faster, and as far
        from fp32 as bf16 is, but not the reference's fp16 rounding.
        `cache_calibration`: the file `stdit-engine calibrate-cache` wrote for this checkpoint, which
        generate(cache="residual") needs (engine/step_cache.py).
        `step_cache`: the step cache ("residual", "attention") the calls will use, so that the
        placement leaves room for its buffers (the attention cache's are large: estimate_memory says
        how large); generate() checks any call's cache against the memory the process can use.
        `warmup`: the batch sizes whose first call loading pays instead (`warmup()`: on a GPU, compiling
        the kernels and capturing the step): True: the preset's prompts per batch; a list: those; False:
        none; by default (None) the preset's prompts per batch on a GPU, none on the CPU
        (plan.warmup_batch_sizes). `load_stats` reports the loading.
        """
        calibration = None if cache_calibration is None else CacheCalibration.load(cache_calibration)
        plan = resolve_plan(preset, device=device, dtype=dtype, t5_dtype=t5_dtype, backend=backend,
                            cuda_graphs=cuda_graphs, placement=placement, parallel=parallel, fp8=fp8,
                            step_cache=step_cache, warmup=warmup)
        preset = plan.preset
        stdit_source = stdit or preset.stdit_hub_id
        t5_source = t5 or preset.text.hub_id
        vae_source = vae or preset.vae.hub_id
        if not (stdit_source and t5_source and vae_source):
            raise ConfigError(
                f"preset {preset.name!r} has no released weights: use Engine.from_random_weights, or pass stdit=, t5= and vae="
            )
        # Off the GPU unless resident: Placement brings each part in for its stage.
        load_device = plan.device if plan.placement == "resident" else torch.device("cpu")
        stdit_file = resolve_model_file(stdit_source, preset.stdit_filename, what="STDiT checkpoint")

        def load() -> tuple[STDiT, TextEncoder, VideoVAE]:
            return (build_stdit(preset, load_device, plan.dtype, plan.backend, checkpoint=stdit_file, fp8=plan.fp8),
                    TextEncoder.from_pretrained(t5_source, device=load_device, dtype=plan.t5_dtype),
                    VideoVAE.from_pretrained(vae_source, device=load_device, dtype=plan.dtype))

        return cls._assemble(plan, load, calibration)

    @classmethod
    def from_random_weights(cls, preset: str | Preset, *, device: str | torch.device | None = None,
                            dtype: torch.dtype | None = None, t5_dtype: torch.dtype = torch.float32,
                            backend: str = "auto", seed: int = 0, cuda_graphs: bool = True,
                            placement: str = "auto", parallel: str = "auto", fp8: bool = False,
                            cache_calibration: str | Path | None = None, step_cache: str | None = None,
                            warmup: bool | Sequence[int] | None = None) -> "Engine":
        """The exact architectures of `preset` with random weights: for tests, demos and benchmarks.

        Its videos are noise-like; it exists to measure speed and memory and to exercise the code.
        Weights are drawn on `device` (fast) and then placed as `placement` says, so the load itself
        briefly holds each whole model on the device. With `parallel` (see from_pretrained), every
        rank draws the same weights from `seed`. `fp8`, `cache_calibration`, `step_cache`, `warmup`: as in
        from_pretrained.
        """
        calibration = None if cache_calibration is None else CacheCalibration.load(cache_calibration)
        preset = get_preset(preset)
        seed = check_seed(seed)
        plan = resolve_plan(preset, device=device, dtype=dtype, t5_dtype=t5_dtype, backend=backend,
                            cuda_graphs=cuda_graphs, placement=placement, parallel=parallel, fp8=fp8,
                            step_cache=step_cache, warmup=warmup)
        preset, device = plan.preset, plan.device

        def draw() -> tuple[STDiT, TextEncoder, VideoVAE]:
            model = build_stdit(preset, device, plan.dtype, plan.backend, seed=seed, fp8=plan.fp8)
            video_vae = VideoVAE.from_random_weights(preset.vae, device=device, dtype=plan.dtype, seed=seed)
            text_encoder = TextEncoder.from_random_weights(preset.text, device=device, dtype=plan.t5_dtype, seed=seed)
            return model, text_encoder, video_vae

        return cls._assemble(plan, draw, calibration, random_weights=True)

    @classmethod
    def _assemble(cls, plan: RuntimePlan, models: Callable[[], tuple[STDiT, TextEncoder, VideoVAE]],
                  calibration: CacheCalibration | None, random_weights: bool = False) -> "Engine":
        """The engine of `plan` on the models that `models()` loads, warmed up as the plan says, with
        each part of the loading timed into `load_stats`: "weights" (reading or drawing them),
        "placement" (moving them where the placement keeps them, e.g. pinning T5 on the host) and
        the warm-up's stages."""
        stats: list[StageStats] = []
        with measure_stage("weights", plan.device, stats):
            stdit, text_encoder, vae = models()
        with measure_stage("placement", plan.device, stats, (stdit, text_encoder.model, vae.model)):
            engine = cls(plan, stdit, text_encoder, vae, random_weights=random_weights)
        engine.load_stats.extend(stats)
        engine.use_cache_calibration(calibration)
        if plan.warmup:
            engine.warmup(plan.warmup)
        return engine

    def use_cache_calibration(self, calibration: CacheCalibration | str | Path | None) -> "Engine":
        """The residual step cache's calibration for these weights (a CacheCalibration or its file);
        refused when it was fitted for another model (engine/cache_calibration.py)."""
        if isinstance(calibration, (str, Path)):
            calibration = CacheCalibration.load(calibration)
        if calibration is not None:
            calibration.check_model(self.stdit, self.preset.name)
        self.cache_calibration = calibration
        return self

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Pays now, e.g. when a server starts, what the first call of each batch size (default: the
        preset's prompts per batch) would pay once: Triton's kernel compilation, the CUDA-graph
        capture of the step (for the default guided channels and sampler; any cfg scale and number
        of steps replay it; at most graph_cache.MAX_CACHED_GRAPHS batch sizes stay captured; a
        placement that moves the STDiT off the GPU between calls captures on every call anyway),
        the first run of T5 and of the VAE decoder, library start-up. Runs a two-step generation per
        batch size, whose stages `load_stats` gains as "warm-up STAGE xSIZE". The constructors call
        it (their `warmup` argument). The warm-up stores no embedding in the prompt cache: what
        later calls return does not depend on whether the engine was warmed up."""
        # Why: the cache is the callers'; an entry stored here would evict one of theirs, and would
        # make what a later call computes (and the bits of an embedding, should T5 ever again depend
        # on its batch, as it did on the GPU before its rows kept one layout) depend on whether the
        # engine was warmed up. Per thread, so calls running meanwhile store theirs as usual.
        self._warming_up.active = True
        try:
            for size in batch_sizes or (self.preset.prompts_per_batch,):
                stats: list[StageStats] = []
                self.generate([WARMUP_PROMPT] * size, seed=0, num_steps=2, progress=False, stats=stats)
                self.load_stats.extend(replace(stage, name=f"warm-up {stage.name} x{size}") for stage in stats)
        finally:
            self._warming_up.active = False

    def use_artifact(self, path: str | Path) -> "Engine":
        """Denoise with an exported STDiT forward (an AOTInductor package, or a TensorRT engine) in
        place of the eager model, which still provides the dtype and the null caption. The artifact
        holds its own weights; steps run without CUDA graphs (capture of artifact calls is untested).
        An artifact is the whole forward on one device, so a parallel engine refuses it rather than
        quietly giving up its split (each rank would compute everything)."""
        from ..export.artifact import load_artifact

        if self.parallel is not None:
            raise ConfigError(f"an exported artifact runs the whole STDiT forward on one device and cannot share "
                              f"it in parallel mode {self.parallel.mode!r}: build this engine with parallel='none' "
                              "(and run one process) to use it")
        self.denoiser = GuidedDenoiser(load_artifact(path, self.stdit, self.device), use_cuda_graphs=False)
        return self

    # ------------------------------------------------------------------ stages

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(y [n,1,L,C_text], mask [n,L]) of the cleaned prompts, on the engine's device; prompts seen
        recently come from `self.prompt_cache`, bitwise as they were computed."""
        return self._encode_cached(self._clean(check_prompts(prompts), stacklevel=2))

    def _clean(self, prompts: list[str], stacklevel: int) -> list[str]:
        """The prompts as T5 reads them; one warning for those it cuts, one for those left empty,
        each pointing at the frame `stacklevel` above this method's caller (as warnings.warn counts)."""
        cleaned = [clean_prompt(p) for p in prompts]
        warn_if_erased(prompts, cleaned, stacklevel + 1)
        self.text_encoder.warn_if_truncated(cleaned, stacklevel + 1)
        return cleaned

    def _encode_cached(self, cleaned: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompt_cache.encode(cleaned, self._encode_cleaned, self.device,
                                        store=not getattr(self._warming_up, "active", False))

    def _encode_cleaned(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._locks.hold("encode"), self.placement.stage("encode"):
            return self.text_encoder.encode(prompts)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str] | str, *, seed: int | Sequence[int] | None = None, num_steps: int = 100,
                 cfg_scale: float = 7.0, guidance_channels: int | None = None,
                 output: Literal["video", "latent"] = "video", progress: bool | ProgressFn = True,
                 cancel: CancelToken | None = None, sampler: str = "iddpm", batch_size: int | None = None,
                 vae_chunk_frames: int | None = None, stats: list[StageStats] | None = None,
                 cache: Literal["residual", "attention"] | None = None, cache_threshold: float | None = None,
                 cache_broadcast: AttentionBroadcast | None = None) -> list[Video] | torch.Tensor:
        """Videos (or final latents [n,C,T,H,W]) for `prompts`, sampled as the reference script does.

        `sampler`: "iddpm" (the reference, default), "ddim" ("ddim:eta=1" for its ancestral form),
        "dpm-solver++" (the fast ODE solver: about 20 steps in place of 100), "unipc" (UniPC: a
        corrector on DPM-Solver++(2M) that costs no model call, steps uniform in t by default) or
        "dpm-solver" (the reference's own DPM-Solver); options after a colon ("ddim:eta=1",
        "unipc:grid=quadratic"); `num_steps` is that sampler's number of model calls.
        `guidance_channels`: eps channels guided, 3 or 4; by default the sampler's convention (3,
        as the released v1.0 sampler; 4 for "dpm-solver", as its reference).

        Prompts are processed `batch_size` at a time (default: the preset's, as the reference).
        `seed`: an int gives one generator for the whole call, as the reference script: the same
        prompts give the reference's videos. A list gives each prompt its own generator (one seed
        per prompt): prompt i then gets the noise of `generate([prompts[i]], seed=seed[i])` with the
        same other arguments, whatever it is batched with. That one-prompt call reproduces it: exactly
        when it is alone in its batch, and within the batch-size tolerance of the kernels otherwise
        (fp32 1e-5, fp16 1e-3, bf16 1e-2 relative; bitwise on the CPU where the math allows). None
        draws from torch's global generator (engine/seeds.py new_seed() makes a seed to report).
        `progress`: True prints a progress bar and the stage report; False is silent; a callable is
        called as progress(steps_done, total_steps) once per denoising step the device has completed,
        in order, from the calling thread (total_steps: the sampler's steps times the prompt batches).
        `cancel`: a CancelToken; once cancelled, the call raises `Cancelled` within a few steps
        (engine/progress.py) and the engine stays usable.
        `vae_chunk_frames`: frames decoded at once (default: as many as fit in free memory).
        Stage times and peak memory are appended to `stats` (a list) when the call completes, and kept
        in `self.last_stats` (a CallStats, whose `plan` line says which placement ran and why; printed
        when `progress` is True): each call gathers its own, so calls from several threads do not mix
        their entries. Prompts longer than the text encoder's 120 tokens are
        truncated, as the reference does, with one PromptTruncatedWarning per call.
        `cache` (default None: off) reuses work across denoising steps, at some cost in fidelity
        (engine/step_cache.py, BENCHMARKS.md): "residual" skips the blocks on the steps where that
        costs least, while the calibration's estimate of the final latent's relative L2 change stays
        below `cache_threshold` (0: never skip; needs `cache_calibration`), "attention" reuses
        attention outputs as `cache_broadcast` (an AttentionBroadcast) says. Left out, both settings are the
        sampler's and step count's defaults (engine/cache_defaults.py), chosen to keep >= 30 dB
        against the uncached run on a proxy model; what they cost depends on the checkpoint.
        Bad arguments raise ConfigError before any work (engine/arguments.py).
        Over several ranks, every rank calls this with the same arguments and gets the same latents;
        videos are gathered on rank 0, and the other ranks get an empty list (so only rank 0 saves).
        Thread-safe: see the class docstring.
        """
        args = check_generate_arguments(prompts, seed=seed, cfg_scale=cfg_scale, output=output, batch_size=batch_size,
                                        vae_chunk_frames=vae_chunk_frames, stats=stats)
        seed, vae_chunk_frames = args.seed, args.vae_chunk_frames
        batch_size = args.batch_size or self.preset.prompts_per_batch
        # Cleaned once, for the warnings and the batches; they point past inference_mode's wrapper.
        prompts = self._clean(args.prompts, stacklevel=3)
        if self.parallel is not None and not self.parallel.is_first:
            progress = False  # one progress bar and one report, from rank 0
        cache_plan = self._cache_plan(cache, sampler, num_steps, cache_threshold, cache_broadcast)
        self._check_cache_memory(cache_plan, min(len(prompts), batch_size))
        sampler = make_sampler(sampler, num_steps=num_steps, cfg_scale=cfg_scale, guidance_channels=guidance_channels)
        noise = call_noise(seed, self.device)
        batches = range(0, len(prompts), batch_size)
        total_steps = len(sampler.step_rows()) * len(batches)
        cancel = check_cancel_token(cancel)
        if progress is True:
            print(self._title())
        report = progress_report(progress, total_steps)  # a bar to close below, when progress is True
        monitor = StepMonitor(total_steps, self.device, report, cancel)
        # A parallel call's collectives must not interleave with another call's on this rank.
        whole_call = self._locks.hold_all(cancel) if self.parallel is not None else nullcontext()
        call_stats = CallStats(self._title())  # this call's own: published whole when it ends
        latents, videos = [], []
        try:
            with whole_call:
                for start in batches:
                    batch = prompts[start:start + batch_size]
                    with self._locks.hold("encode", cancel), measure_stage("encode", self.device, call_stats,
                                                                           self._models):
                        if self.parallel is None:
                            y, mask = self._encode_cached(batch)
                        else:
                            y, mask = encode_on_first(self.parallel, lambda: self._encode_cached(batch), self.device)
                    with self._locks.hold("denoise", cancel), measure_stage("denoise", self.device, call_stats,
                                                                            self._models) as parts:
                        latent = self._denoise(sampler, y, mask, noise.batch(start, start + len(batch)), monitor,
                                               cache_plan, parts)
                    if output == "latent":
                        latents.append(latent)
                        continue
                    with self._locks.hold("decode", cancel), measure_stage("decode", self.device, call_stats,
                                                                           self._models), self.placement.stage("decode"):
                        frames = self._decode(latent, vae_chunk_frames)
                        if frames is not None:  # None: a rank other than 0, which keeps no video
                            videos.extend(Video(sample_frames, self.preset.fps) for sample_frames in frames)
        finally:
            if isinstance(report, ProgressBar):
                report.close()
        self.last_stats = call_stats
        if stats is not None:
            stats.extend(call_stats)
        if progress is True:
            print(call_stats.describe(self.device))
        return torch.cat(latents) if output == "latent" else videos

    def _cache_plan(self, cache, sampler: str, num_steps: int, threshold, broadcast) -> CachePlan | None:
        plan = make_plan(cache, sampler=sampler, evaluations=num_steps, threshold=threshold, broadcast=broadcast,
                         calibration=self.cache_calibration)
        if plan is not None and not isinstance(self.denoiser.model, STDiT):
            raise ConfigError("step caching reaches into the STDiT's blocks, which an exported artifact does not "
                              "expose: generate without cache=, or without use_artifact()")
        return plan

    def _check_cache_memory(self, plan: CachePlan | None, samples: int) -> None:
        """A clear error in place of an out-of-memory error part way through the call, when the step
        cache's buffers cannot fit (on one GPU: a parallel engine's ranks hold parts of them)."""
        if plan is None or self.device.type != "cuda" or self.parallel is not None:
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        check_step_cache_memory(self.preset, samples, self.placement.mode, self.dtype, self.text_encoder.dtype,
                                self.device, self.stdit.ops.name, self.stdit.is_fp8, plan.mode,
                                available=free + torch.cuda.memory_reserved(self.device))

    def _denoise(self, sampler: Sampler, y, mask, noise: SharedNoise | PromptNoise, monitor: StepMonitor,
                 cache_plan: CachePlan | None = None, parts: dict[str, float] | None = None) -> torch.Tensor:
        with self.placement.stage("denoise"):
            # The reference draws the initial latent in the model's dtype on the sampling device.
            z = noise.draw((y.shape[0], *self.preset.latent_shape), self.dtype, self.device)
            y_null = self.stdit.y_embedder.y_embedding[None, None]
            try:
                with monitor.loop():  # its steps are over on the device before the graphs or weights go
                    return self.denoiser.sample(sampler, z, y, mask, y_null, noise_fn=noise.draw, monitor=monitor,
                                                cache=cache_plan, parts=parts)
            except SamplingError as err:
                dtype = str(self.dtype).removeprefix("torch.")
                raise SamplingError(f"{err}: {explain_nonfinite(dtype, sampler.cfg_scale)}") from err
            finally:
                if not self.placement.keeps("denoise"):
                    # The weights leave the GPU now and return elsewhere next call: graphs captured
                    # on these addresses would be stale (even after an error), and their memory
                    # pool is wanted by the next stage.
                    self.denoiser.clear()

    def _decode(self, latent: torch.Tensor, vae_chunk_frames: int | None) -> torch.Tensor | None:
        def decode(part: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(part.to(self.dtype), to_uint8=True,
                                   chunk_frames=vae_chunk_frames or self.decode_chunk_frames(part.shape[0]))

        return decode(latent) if self.parallel is None else decode_split(self.parallel, decode, latent, self.device)

    def decode_chunk_frames(self, samples: int) -> int | None:
        """Frames to decode at once: all of them on the CPU; on a GPU, as the placement's decode
        budget allows (memory.decode_budget)."""
        if self.device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        return decode_chunk(self.preset, samples, self.placement.mode, self.dtype, self.text_encoder.dtype, free,
                            device=self.device, backend=self.stdit.ops.name, fp8=self.stdit.is_fp8)

    def _title(self) -> str:
        """The plan this engine runs, as the progress output and the stage report head it."""
        return f"stdit-engine{' (random weights)' if self.random_weights else ''}: {self.plan.describe()}"

