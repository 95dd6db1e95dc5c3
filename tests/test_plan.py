"""The runtime plan (engine/plan.py): resolved once, frozen, what both constructors build from, and
what `stdit-engine info`, the progress output and the stage report print."""
import dataclasses

import pytest
import torch

from stdit_engine import Engine, get_preset
from stdit_engine.cli import main
from stdit_engine.engine import api
from stdit_engine.engine.plan import RuntimePlan, resolve_plan
from stdit_engine.errors import ConfigError


def test_auto_options_resolve_on_the_cpu():
    plan = resolve_plan("tiny", device="cpu")
    assert (plan.device, plan.dtype, plan.t5_dtype, plan.backend, plan.placement, plan.fp8, plan.parallel) == (
        torch.device("cpu"), torch.float32, torch.float32, "eager", "resident", False, None)
    assert plan.preset.name == "tiny"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.placement = "lean"
    assert plan.describe() == ("tiny on cpu, float32 (T5 float32), eager kernels, no CUDA graphs, "
                               "placement resident (the only placement on cpu)")


def test_bad_options_fail_in_the_plan():
    with pytest.raises(ConfigError, match="unknown kernel backend"):
        resolve_plan("tiny", device="cpu", backend="fast")
    with pytest.raises(ConfigError, match="on cpu use 'resident'"):
        resolve_plan("tiny", device="cpu", placement="offload")


@pytest.mark.parametrize("constructor", ["from_random_weights", "from_pretrained"])
def test_both_constructors_resolve_through_the_one_plan(constructor, monkeypatch):
    """Each constructor hands its load-time options to resolve_plan, unchanged, and loads nothing
    before it returns (here it refuses)."""
    asked = []

    def refuse(preset, **options):
        asked.append((get_preset(preset).name, options))
        raise ConfigError("stop")

    monkeypatch.setattr(api, "resolve_plan", refuse)
    with pytest.raises(ConfigError, match="stop"):
        getattr(Engine, constructor)("tiny", device="cpu", dtype=torch.bfloat16, backend="sdpa", placement="resident",
                                     parallel="none", cuda_graphs=False, step_cache="attention", warmup=[1])
    assert asked == [("tiny", dict(device="cpu", dtype=torch.bfloat16, t5_dtype=torch.float32, backend="sdpa",
                                   cuda_graphs=False, placement="resident", parallel="none", fp8=False,
                                   step_cache="attention", warmup=[1]))]


def test_the_engine_runs_its_plan_and_prints_it(capsys):
    engine = Engine.from_random_weights("tiny", device="cpu", backend="sdpa", cuda_graphs=False)
    plan = engine.plan
    assert isinstance(plan, RuntimePlan) and plan == resolve_plan("tiny", device="cpu", backend="sdpa",
                                                                  cuda_graphs=False)
    assert (engine.stdit.ops.name, engine.placement.mode, engine.text_encoder.dtype, engine.dtype, engine.device) == (
        plan.backend, plan.placement, plan.t5_dtype, plan.dtype, plan.device)
    engine.generate("a red car in the snow", seed=0, num_steps=2, output="latent", progress=True)
    printed = capsys.readouterr().out
    assert printed.count(plan.describe()) == 2  # the progress header and the stage report
    assert main(["info", "--preset", "tiny"]) == 0
    assert f"runtime plan of `generate --preset tiny` here: {resolve_plan('tiny').describe()}" in capsys.readouterr().out
