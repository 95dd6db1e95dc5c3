"""STDiT checkpoint loading: the released format at full size, safetensors, and the errors."""
import pickle

import pytest
import torch
from golden import load_golden
from safetensors.torch import save_file

from stdit_engine.configs import PRESETS
from stdit_engine.errors import CheckpointError
from stdit_engine.models.checkpoint import load_stdit_checkpoint
from stdit_engine.models.stdit import STDiT


def meta_xl2() -> STDiT:
    with torch.device("meta"):
        return STDiT(**PRESETS["16x256x256"].stdit.to_kwargs())


def released_style_state(model: STDiT) -> dict:
    """Every key of the model with its shape, fp32, unique content per tensor (cheap to make)."""
    state = {}
    for i, (key, ref) in enumerate(model.state_dict().items()):
        state[key] = torch.empty(ref.shape, dtype=torch.float32).fill_(i * 1e-3)
    return state


@pytest.mark.slow
def test_full_size_released_pth_with_ema_and_pos_embed(tmp_path):
    model = meta_xl2()
    state = released_style_state(model)
    n_params = sum(v.numel() for k, v in state.items() if k != "y_embedder.y_embedding")
    # The sum of SPEC section 2's shapes (its prose rounds this to "about 724 M").
    assert n_params == 759_620_768
    stale = {"pos_embed": torch.zeros(1, 256, 1152), "pos_embed_temporal": torch.zeros(1, 16, 1152)}
    path = tmp_path / "OpenSora-v1-HQ-16x256x256.pth"
    torch.save({"ema": {**state, **stale}}, path)

    loaded = load_stdit_checkpoint(model, path)
    path.unlink()  # 3 GB: not left in the temporary folders pytest keeps
    loaded_state = loaded.state_dict()
    for key in ("x_embedder.proj.weight", "blocks.27.mlp.fc2.bias", "y_embedder.y_embedding"):
        assert torch.equal(loaded_state[key], state[key]), key
    # The stale file copies are ignored: the recomputed embedding is not the zeros of the file.
    assert loaded.pos_embed.abs().sum() > 0


def test_safetensors(tmp_path):
    golden = load_golden("stdit_tiny_16x256.pt")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in golden["state_dict"].items()}, str(path))
    model = load_stdit_checkpoint(STDiT(**golden["config"]), path)
    assert torch.equal(model.blocks[1].attn.qkv.weight, golden["state_dict"]["blocks.1.attn.qkv.weight"])


def test_missing_and_unexpected_keys_are_named(tmp_path):
    golden = load_golden("stdit_tiny_16x256.pt")
    state = dict(golden["state_dict"])
    del state["blocks.1.mlp.fc1.weight"]
    state["blocks.2.attn.qkv.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"1 missing: blocks\.1\.mlp\.fc1\.weight.*1 unexpected: blocks\.2\.attn\.qkv\.weight"):
        load_stdit_checkpoint(STDiT(**golden["config"]), tmp_path / "bad.pth")


def test_wrong_architecture_names_the_shapes(tmp_path):
    golden = load_golden("stdit_tiny_16x256.pt")
    torch.save(golden["state_dict"], tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape: .*file \(144, 4, 1, 2, 2\) vs model \(1152, 4, 1, 2, 2\)"):
        load_stdit_checkpoint(meta_xl2(), tmp_path / "tiny.pth")


@pytest.mark.parametrize("state, part", [
    ({"shared.weight": torch.zeros(4, 2), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}, "T5"),
    ({"encoder.conv_in.weight": torch.zeros(2), "decoder.conv_in.weight": torch.zeros(2)}, "VAE"),
])
def test_other_models_state_dict_is_recognised(tmp_path, state, part):
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=f"{part}.*not of STDiT"):
        load_stdit_checkpoint(meta_xl2(), tmp_path / "other.pth")


def test_t5_folder_passed_as_stdit(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["T5EncoderModel"], "model_type": "t5"}')
    with pytest.raises(CheckpointError, match="T5 text-encoder folder.*t5="):
        load_stdit_checkpoint(meta_xl2(), tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stdit_checkpoint(meta_xl2(), tmp_path / "nope.pth")


class NotATensor:
    pass


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"blocks.0.x": NotATensor()}, f)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_stdit_checkpoint(meta_xl2(), path)
