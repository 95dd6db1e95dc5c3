"""The eager STDiT against the reference implementation's outputs (fp32, relative error < 1e-5)."""
import collections
import dataclasses

import pytest
import torch
from golden import load_golden, rel_error

from stdit_engine.errors import ConfigError
from stdit_engine.models.stdit import STDiT

GOLDEN_MODELS = ["stdit_tiny_16x256.pt", "stdit_tiny_64x512.pt"]


def golden_model(golden: dict, backend: str = "eager") -> STDiT:
    model = STDiT(**golden["config"], backend=backend).eval()
    model.load_state_dict(golden["state_dict"])
    return model


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_position_embeddings_match_reference(name):
    golden = load_golden(name)
    model = golden_model(golden)
    assert model.pos_embed.shape == golden["pos_embed"].shape
    assert rel_error(model.pos_embed, golden["pos_embed"]) < 1e-6
    assert model.pos_embed_temporal.shape == golden["pos_embed_temporal"].shape
    assert rel_error(model.pos_embed_temporal, golden["pos_embed_temporal"]) < 1e-6


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_forward_matches_reference(name, backend):
    golden = load_golden(name)
    model = golden_model(golden, backend)
    with torch.no_grad():
        out = model(golden["x"], golden["timestep"], golden["y"], golden["mask"])
    assert out.shape == golden["out"].shape
    assert rel_error(out, golden["out"]) < 1e-5


def test_caption_mask_changes_the_output():
    # Guards the per-sample caption lengths: attending to padded caption tokens must be visible.
    golden = load_golden("stdit_tiny_64x512.pt")  # mask [1,1,1,0,...]: padded tokens exist
    model = golden_model(golden)
    full_mask = torch.ones_like(golden["mask"])
    with torch.no_grad():
        out = model(golden["x"], golden["timestep"], golden["y"], full_mask)
    assert rel_error(out, golden["out"]) > 1e-3


def test_wrong_latent_shape_is_a_config_error():
    golden = load_golden("stdit_tiny_16x256.pt")
    model = golden_model(golden)
    x = golden["x"][:, :, :2]  # 2 frames where the model was built for 4
    with pytest.raises(ConfigError, match="does not fit this model"):
        model(x, golden["timestep"], golden["y"], golden["mask"])


def test_mask_rows_must_divide_batch():
    golden = load_golden("stdit_tiny_16x256.pt")
    model = golden_model(golden)
    mask = torch.ones(3, golden["y"].shape[2], dtype=torch.long)
    with pytest.raises(ConfigError, match="does not divide"):
        model(golden["x"], golden["timestep"], golden["y"], mask)


def count_op_calls(model: STDiT, names) -> collections.Counter:
    """Makes `model` count its calls of the named ops (in the returned Counter)."""
    calls = collections.Counter()

    def counted(name, op):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return op(*args, **kwargs)
        return wrapper

    model.ops = dataclasses.replace(model.ops, **{n: counted(n, getattr(model.ops, n)) for n in names})
    model._bind_fp8_quantizer()
    return calls


def test_each_residual_is_added_in_the_pass_of_the_norm_after_it():
    """The fast backend saves a pass over the tokens per fusion: the forward must call the fused
    residual+norm for the cross-attention's sum and for every MLP residual (the last one with the
    final layer's norm), leaving the plain norm to block 0 alone; and still match the reference."""
    golden = load_golden("stdit_tiny_16x256.pt")
    model = golden_model(golden)
    calls = count_op_calls(model, ("ln_modulate", "gated_residual", "gated_residual_ln_modulate"))
    with torch.no_grad():
        out = model(golden["x"], golden["timestep"], golden["y"], golden["mask"])
    depth = len(model.blocks)
    assert calls == {"ln_modulate": 1, "gated_residual": 2 * depth, "gated_residual_ln_modulate": 2 * depth}
    assert rel_error(out, golden["out"]) < 1e-5
