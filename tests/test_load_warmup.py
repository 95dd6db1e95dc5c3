"""Cold start (issue 20): loading warms the engine up where a first call has something to pay (a GPU),
and reports its own stages (weights, placement, warm-up) apart from any call's; the CLI prints that
report, and a server warms every batch size once, while loading. (On the GPU, that a warmed engine's
first call captures nothing: tests/test_gpu_lean.py.)"""
import argparse

import pytest
import torch

from stdit_engine import Engine
from stdit_engine.cli import main
from stdit_engine.configs import PRESETS
from stdit_engine.engine.api import WARMUP_PROMPT
from stdit_engine.engine.memory import CallStats, StageStats
from stdit_engine.engine.plan import warmup_batch_sizes
from stdit_engine.engine.prompt_cache import PromptEmbeddingCache
from stdit_engine.errors import ConfigError
from stdit_engine.models.caption import clean_prompt
from stdit_engine.serving import command as serve_command

TINY = PRESETS["tiny"]


def test_by_default_loading_warms_up_on_a_gpu_only_and_warms_up_as_asked():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert warmup_batch_sizes(None, TINY, gpu) == (TINY.prompts_per_batch,)
    assert warmup_batch_sizes(None, TINY, cpu) == ()
    for device in (cpu, gpu):
        assert warmup_batch_sizes(True, TINY, device) == (TINY.prompts_per_batch,)
        assert warmup_batch_sizes(False, TINY, device) == ()
    assert warmup_batch_sizes(range(1, 4), TINY, cpu) == (1, 2, 3)
    assert warmup_batch_sizes([2, 1, 2], TINY, cpu) == (2, 1)  # each size once
    for bad in ([0], [1.5], [None], [True], "2", 2):
        with pytest.raises(ConfigError, match="warmup"):
            warmup_batch_sizes(bad, TINY, cpu)


def test_loading_on_the_cpu_reports_its_stages_and_does_not_warm_up():
    engine = Engine.from_random_weights("tiny", device="cpu")
    assert [stage.name for stage in engine.load_stats] == ["weights", "placement"]
    assert all(stage.seconds > 0 for stage in engine.load_stats)
    assert engine.load_stats.plan == f"loading {engine.last_stats.plan}"
    assert len(engine.prompt_cache) == 0  # nothing was generated
    weights = sum(t.numel() * t.element_size() for m in engine._models for t in (*m.parameters(), *m.buffers()))
    assert engine.load_stats[1].peak_allocated >= weights  # the placed weights count on the CPU too


def test_warmup_while_loading_runs_each_batch_size_and_records_its_stages():
    engine = Engine.from_random_weights("tiny", device="cpu", warmup=[1, 2])
    stages = ("encode", "denoise", "decode")
    assert [stage.name for stage in engine.load_stats] == ["weights", "placement",
                                                           *(f"warm-up {s} x{n}" for n in (1, 2) for s in stages)]
    assert len(engine.prompt_cache) == 0  # the warm-up leaves no embedding behind (next test)
    report = engine.load_stats.describe(engine.device)
    assert report.splitlines()[0] == f"{engine.load_stats.plan}:"
    assert "  warm-up denoise x2 " in report


def test_a_warmed_up_engine_encodes_a_call_in_the_batches_an_unwarmed_one_does(monkeypatch):
    # Had the warm-up left its prompt's embedding in the prompt cache, a later call with that
    # prompt beside a new one would encode only the new one: a call would then depend on whether
    # the engine warmed up, wherever T5's rows depend on their batch (a kernel or library that
    # batches differently). What is checked is what T5 is asked to encode, call by call.
    batches = []
    real = Engine._encode_cleaned

    def encode(self, prompts):
        batches.append(list(prompts))
        return real(self, prompts)

    monkeypatch.setattr(Engine, "_encode_cleaned", encode)
    prompts = [clean_prompt(WARMUP_PROMPT), "a red car in the snow"]
    kwargs = dict(seed=4, num_steps=2, output="latent", progress=False)
    warm = Engine.from_random_weights("tiny", device="cpu", warmup=True)
    batches.clear()  # the warm-up's own encode
    warm_latent = warm.generate(prompts, **kwargs)
    cold = Engine.from_random_weights("tiny", device="cpu")
    cold_latent = cold.generate(prompts, **kwargs)
    assert batches == [prompts, prompts]
    assert torch.equal(warm_latent, cold_latent)


def test_a_warmup_stores_nothing_and_evicts_nothing_from_the_prompt_cache():
    engine = Engine.from_random_weights("tiny", device="cpu")
    engine.prompt_cache = PromptEmbeddingCache(2)
    engine.encode_prompts(["a red car in the snow", "a cat"])  # full, without the warm-up's prompt
    held = dict(engine.prompt_cache._entries)
    engine.warmup([1])
    assert engine.prompt_cache._entries == held  # the caller's entries, every one kept as it was
    prompt = clean_prompt(WARMUP_PROMPT)
    engine.encode_prompts([prompt])  # the thread that warmed up stores again afterwards
    assert prompt in engine.prompt_cache


def test_a_stage_report_shows_its_one_off_parts():
    stats = CallStats("plan", [StageStats("encode", 0.4, 1, 1),
                               StageStats("denoise", 5.0, 1, 1, parts={"compile": 2.5, "capture": 1.5})])
    encode, denoise = stats.describe(torch.device("cpu")).splitlines()[1:]
    assert "of which" not in encode
    assert denoise.endswith("   (of which compile 2.50 s, capture 1.50 s)")
    assert encode.index(" s ") == denoise.index(" s ")  # the columns line up


def test_the_command_line_prints_the_load_report_and_does_not_warm_up(tmp_path, capsys):
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--steps", "2",
                 "--prompt", "a cat", "--out", str(tmp_path / "clip.gif")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "loading stdit-engine (random weights): tiny on cpu" in printed
    assert "  weights " in printed and "  placement " in printed
    assert "warm-up" not in printed


@pytest.mark.parametrize("device, warmup", [("cpu", False), ("cuda", range(1, 4))])
def test_a_server_warms_every_batch_size_while_loading_on_a_gpu(device, warmup, monkeypatch):
    monkeypatch.setattr("stdit_engine.devices.resolve_device", torch.device)  # "cuda" without a GPU
    built = []

    def build_engine(args, **options):
        built.append(options)
        return "engine"

    args = argparse.Namespace(device=device, max_batch=3)
    assert serve_command.serving_engine(args, build_engine) == "engine"
    assert built == [dict(warmup=warmup)]  # once, at load: no second warm-up after it
