"""The caption cleaner against the reference's golden pairs, and its behaviour on edge cases."""
import json

import pytest

from stdit_engine.errors import ConfigError
from stdit_engine.models.caption import clean_caption, clean_prompt

from golden import GOLDEN_DIR

PAIRS = json.loads((GOLDEN_DIR / "captions.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("raw, cleaned", PAIRS, ids=[f"pair{i}" for i in range(len(PAIRS))])
def test_golden_pairs(raw, cleaned):
    assert clean_prompt(raw) == cleaned


def test_two_passes_are_needed():
    # The first pass leaves a " . " where the URL was; only the second pass removes it.
    raw = "Check https://example.com/video.mp4 for more"
    assert clean_caption(raw) == "check . for more"
    assert clean_prompt(raw) == clean_caption(clean_caption(raw)) == "check for more"


@pytest.mark.parametrize("text", [
    "a serene underwater scene featuring a sea turtle swimming through a coral reef.",
    "a cat, a dog and a bird on a sunny day",
])
def test_clean_text_is_unchanged(text):
    assert clean_caption(text) == text
    assert clean_prompt(clean_prompt(text)) == clean_prompt(text) == text


def test_lower_cases_and_strips():
    assert clean_prompt("  A Red Car  ") == "a red car"


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["a list"]])
def test_non_string_is_rejected(bad):
    with pytest.raises(ConfigError, match="caption must be a str"):
        clean_prompt(bad)
