"""One process's cold start, as a user trying the engine meets it: import, load (random weights),
the first generate() and then a warm one, both on new prompts; prints one JSON object. Within the
first call it also times what Triton spends compiling (or reading its disk cache), what the
CUDA-graph captures take (two eager warm-up steps each, then the capture) and, of that, the graphs'
instantiation (the end of each capture).
Usage: python benchmarks/cold_start.py PRESET PLACEMENT STEPS [--compile-one-by-one]
(test_cold_start.py runs it with an empty Triton cache, then with the cache that run left, then
with another empty cache and the kernels compiled one by one at first launch, as before the
first capture compiled them in parallel)."""
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


def main(preset: str, placement: str, steps: int, compile_one_by_one: bool = False) -> dict:
    import contextlib

    import triton.compiler

    from stdit_engine.engine import denoise

    if compile_one_by_one:
        denoise.compile_in_parallel = contextlib.nullcontext

    import_s = time.perf_counter() - start
    triton_compile = {"calls": 0, "seconds": 0.0}
    graph_capture = {"calls": 0, "seconds": 0.0}
    graph_instantiate = {"calls": 0, "seconds": 0.0}
    add_timer(triton.compiler, "compile", triton_compile, synchronize=False)  # looked up when a kernel first runs
    add_timer(denoise.GraphedStep, "_capture", graph_capture, synchronize=True)  # warm-up steps and capture
    add_timer(torch.cuda.graphs.graph, "__exit__", graph_instantiate, synchronize=True)
    load_start = time.perf_counter()
    engine = Engine.from_random_weights(preset, device="cuda", placement=placement)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - load_start
    during_load = dict(triton_compile)
    triton_compile.update(calls=0, seconds=0.0)
    prompts = REFERENCE_E2E[preset].prompts
    first = timed_call(engine, new_prompts(prompts), steps)
    first.update(triton_compile=dict(triton_compile), graph_capture=dict(graph_capture),
                 graph_instantiate=dict(graph_instantiate))
    warm = timed_call(engine, new_prompts(prompts), steps)
    return dict(preset=preset, placement=engine.placement.mode, steps=steps, compile_one_by_one=compile_one_by_one,
                import_s=import_s, load_s=load_s,
                triton_compile_during_load=during_load, first=first, warm=warm,
                first_over_warm=first["seconds"] / warm["seconds"])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--compile-one-by-one" in sys.argv[4:])))
