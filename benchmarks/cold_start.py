"""One process's cold start, as a user trying the engine meets it: import, load (random weights),
the first generate() and then a warm one, both on new prompts; prints one JSON object.
Usage: python benchmarks/cold_start.py PRESET PLACEMENT STEPS (test_cold_start.py runs it twice,
with an empty Triton cache and then with the cache the first run left)."""
import json
import sys
import time

start = time.perf_counter()
import torch  # noqa: E402  (timed: part of what a first run pays)
from timed_calls import new_prompts, timed_call  # noqa: E402

from stdit_engine import Engine  # noqa: E402
from stdit_engine.bench import REFERENCE_E2E  # noqa: E402


def main(preset: str, placement: str, steps: int) -> dict:
    import_s = time.perf_counter() - start
    load_start = time.perf_counter()
    engine = Engine.from_random_weights(preset, device="cuda", placement=placement)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - load_start
    prompts = REFERENCE_E2E[preset][0]
    first = timed_call(engine, new_prompts(prompts), steps)
    warm = timed_call(engine, new_prompts(prompts), steps)
    return dict(preset=preset, placement=engine.placement.mode, steps=steps, import_s=import_s, load_s=load_s,
                first=first, warm=warm, first_over_warm=first["seconds"] / warm["seconds"])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
