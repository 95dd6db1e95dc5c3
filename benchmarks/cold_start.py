"""One process's cold start, as a user trying the engine meets it: import, load (random weights; by
default warmed up while loading, as the engine does on a GPU), the first generate() and then a warm
one, both on new prompts; prints one JSON object. Loading is reported stage by stage as the engine's
load report has it (weights, placement, each warm-up stage with its compile and capture seconds),
so that neither the load nor the first call hides what the other paid. Independently of the
engine's report, it also counts what Triton spends compiling (or reading its disk cache) and the
CUDA-graph captures (two eager warm-up steps each, then the capture) and, of that, the graphs'
instantiation (the end of each capture), during the load and during the first call.
Usage: python benchmarks/cold_start.py PRESET PLACEMENT STEPS [--no-warmup]
(test_cold_start.py runs it with an empty Triton cache, then with the cache that run left, then
with another empty cache and no warm-up while loading, where the first call pays it all).
"""
import json
import sys
import time
from functools import wraps

start = time.perf_counter()
import torch  # noqa: E402  (timed: part of what a first run pays)
from timed_calls import new_prompts, timed_call  # noqa: E402

from stdit_engine import Engine  # noqa: E402
from stdit_engine.reference import REFERENCE_E2E  # noqa: E402


def add_timer(owner, name: str, record: dict, synchronize: bool) -> None:
    """Wraps owner.name so that its calls and their total wall time (with `synchronize`, up to the end
    of the GPU work they queued) accumulate in `record`; calls in several threads add up."""
    original = getattr(owner, name)

    @wraps(original)
    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if synchronize:
                torch.cuda.synchronize()
            record["calls"] += 1
            record["seconds"] += time.perf_counter() - begin

    setattr(owner, name, timed)


def main(preset: str, placement: str, steps: int, warmup: bool = True) -> dict:
    import triton.compiler

    from stdit_engine.engine import denoise

    import_s = time.perf_counter() - start
    triton_compile = {"calls": 0, "seconds": 0.0}
    graph_capture = {"calls": 0, "seconds": 0.0}
    graph_instantiate = {"calls": 0, "seconds": 0.0}
    add_timer(triton.compiler, "compile", triton_compile, synchronize=False)  # looked up when a kernel first runs
    add_timer(denoise.GraphedStep, "_capture", graph_capture, synchronize=True)  # warm-up steps and capture
    add_timer(torch.cuda.graphs.graph, "__exit__", graph_instantiate, synchronize=True)
    timers = dict(triton_compile=triton_compile, graph_capture=graph_capture, graph_instantiate=graph_instantiate)

    def take_timers() -> dict:
        """What the timers counted since they were last taken."""
        taken = {name: dict(record) for name, record in timers.items()}
        for record in timers.values():
            record.update(calls=0, seconds=0.0)
        return taken

    load_start = time.perf_counter()
    engine = Engine.from_random_weights(preset, device="cuda", placement=placement, warmup=warmup)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - load_start
    during_load = take_timers()
    load_stages = {stage.name: round(stage.seconds, 4) for stage in engine.load_stats}
    warmup_s = sum(stage.seconds for stage in engine.load_stats if stage.name.startswith("warm-up"))
    prompts = REFERENCE_E2E[preset].prompts
    first = timed_call(engine, new_prompts(prompts), steps)
    first.update(take_timers())
    warm = timed_call(engine, new_prompts(prompts), steps)
    return dict(preset=preset, placement=engine.placement.mode, steps=steps, warmup=list(engine.plan.warmup),
                import_s=import_s, load_s=load_s, load_stages=load_stages,
                load_parts={stage.name: stage.parts for stage in engine.load_stats if stage.parts},
                warmup_s=warmup_s, during_load=during_load, first=first, warm=warm,
                first_over_warm=first["seconds"] / warm["seconds"])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), warmup="--no-warmup" not in sys.argv[4:])))
