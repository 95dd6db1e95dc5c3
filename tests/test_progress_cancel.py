"""The progress callback (steps done, total) and CancelToken / Cancelled, on the CPU; the device-side
bound (steps queued ahead of the GPU) is tested in test_gpu_concurrency.py."""
import threading

import pytest
import torch

from stdit_engine import Cancelled, CancelToken, Engine
from stdit_engine.errors import ConfigError

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
STEPS = 4


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


def latents(engine, **kwargs):
    return engine.generate(PROMPTS, **{"seed": 5, "num_steps": STEPS, "output": "latent", "progress": False, **kwargs})


def test_callback_sees_every_step_of_every_batch_in_order(engine, capsys):
    calls = []
    latents(engine, progress=lambda done, total: calls.append((done, total)), batch_size=1)
    assert calls == [(done, 2 * STEPS) for done in range(1, 2 * STEPS + 1)]
    assert capsys.readouterr().out == ""  # a callback replaces the printed report


def test_progress_true_prints_the_stage_report(engine, capsys):
    latents(engine, progress=True)
    printed = capsys.readouterr()
    assert "denoise" in printed.out and "encode" in printed.out
    assert f"{STEPS}/{STEPS}" in printed.err  # the bar reached the end


def test_cancel_during_denoise_stops_and_the_engine_stays_exact(engine):
    token, seen = CancelToken(), []

    def cancel_at_second_step(done, total):
        seen.append(done)
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled, match="cancelled"):
        latents(engine, progress=cancel_at_second_step, cancel=token, num_steps=50)
    assert seen == [1, 2]  # on the CPU a step is complete once queued: it stops at once
    fresh = Engine.from_random_weights("tiny", device="cpu")
    assert torch.equal(latents(engine), latents(fresh))


def test_a_cancelled_token_stops_the_call_before_it_starts(engine):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        latents(engine, cancel=token, progress=lambda done, total: pytest.fail("no step should run"))


def test_cancel_while_waiting_for_a_stage(engine):
    token, outcome = CancelToken(), []

    def call():
        try:
            latents(engine, cancel=token)
        except Cancelled as error:
            outcome.append(error)

    with engine._locks.hold("encode"):  # another call's encode is in the way
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # waiting for the stage
        token.cancel()
        thread.join(10)
    assert not thread.is_alive() and len(outcome) == 1


@pytest.mark.parametrize("kwargs, message", [(dict(progress="yes"), "progress must be"),
                                             (dict(cancel=threading.Event()), "cancel must be")])
def test_bad_progress_or_cancel(engine, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        latents(engine, **kwargs)
