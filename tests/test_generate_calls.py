"""Per-call facts of generate(): each call's stage stats (never mixed across threads), one warning
for prompts that the text encoder truncates and one for prompts that cleaning leaves empty."""
import threading
import warnings

import pytest
import torch

from stdit_engine import Engine, PromptErasedWarning, PromptTruncatedWarning

STAGES = ["encode", "denoise", "decode"]


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


def test_stats_list_gets_this_calls_stages(engine):
    stats = ["kept"]
    engine.generate(["a cat", "a dog", "a bird"], seed=0, num_steps=2, progress=False, stats=stats)
    # 3 prompts in the tiny preset's batches of 2: two rounds of the three stages
    assert stats[0] == "kept" and [s.name for s in stats[1:]] == STAGES * 2
    assert engine.last_stats == stats[1:]
    before = engine.last_stats
    engine.generate(["a cat"], seed=0, num_steps=2, progress=False, output="latent")
    assert [s.name for s in engine.last_stats] == ["encode", "denoise"]
    assert [s.name for s in before] == STAGES * 2  # a published list is never changed afterwards


def test_threads_sharing_an_engine_do_not_mix_stats(engine):
    calls = 4
    results: dict[int, list] = {}
    errors = []
    start = threading.Barrier(calls)

    def call(index: int) -> None:
        stats = []
        try:
            start.wait(timeout=60)
            engine.generate([f"prompt {index}"], seed=index, num_steps=3, progress=False, stats=stats)
            results[index] = [s.name for s in stats]
            assert [s.name for s in engine.last_stats] == STAGES  # whole, from one call or another
        except Exception as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and all(not t.is_alive() for t in threads)
    assert results == {i: STAGES for i in range(calls)}


def test_long_prompts_get_one_warning_per_call(engine):
    long_prompt = "a cat " * 100  # far over 120 tokens
    with pytest.warns(PromptTruncatedWarning) as caught:
        engine.generate([long_prompt, "a dog", long_prompt], seed=0, num_steps=2, progress=False, output="latent")
    assert len(caught) == 1  # one for the call, though two prompts in two batches were cut
    message = str(caught[0].message)
    assert "2 of 3 prompt(s)" in message and "120 tokens" in message and "as the reference does" in message
    assert "#0" in message and "#2" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        engine.generate(["a dog"], seed=0, num_steps=2, progress=False, output="latent")  # short: no warning


def test_prompts_with_no_words_left_once_cleaned_get_one_warning_naming_them(engine):
    with pytest.warns(PromptErasedWarning) as caught:
        engine.generate(["海龟", "a dog", "https://example.com"], seed=0, num_steps=2, progress=False,
                        output="latent")
    assert len(caught) == 1 and caught[0].filename == __file__  # pointed at this call, not at torch's wrapper
    message = str(caught[0].message)
    assert "2 of 3 prompt(s)" in message and "#0 '海龟'" in message and "#2 " in message and "#1" not in message
    # As the reference: the erased prompt is generated all the same, as the empty prompt would be.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptErasedWarning)
        erased, empty = (engine.generate([prompt], seed=0, num_steps=2, progress=False, output="latent")
                         for prompt in ("海龟", ""))
    assert torch.equal(erased, empty)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptErasedWarning)
        engine.generate(["a dog"], seed=0, num_steps=2, progress=False, output="latent")
    with pytest.warns(PromptErasedWarning) as caught:
        engine.encode_prompts(["@turtle"])
    assert caught[0].filename == __file__
