"""TextEncoder (T5 + tokenizer) and the hub resolution in stdit_engine.models.hub, on the tiny preset."""
import dataclasses
import threading
import time

import pytest
import torch
from helpers_hf import make_hub_cache_repo, make_tiny_t5_dir

from stdit_engine.configs import PRESETS
from stdit_engine.errors import CheckpointError, ConfigError
from stdit_engine.models.hub import resolve_model_dir, resolve_model_file
from stdit_engine.models.text_encoder import TextEncoder

CFG = PRESETS["tiny"].text
PROMPTS = ["a sea turtle swimming over a coral reef", "a cat", "a quokka juggling xylophones, 4k!"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.from_random_weights(CFG, device="cpu")


@pytest.fixture(scope="module")
def t5_dir(encoder, tmp_path_factory):
    return make_tiny_t5_dir(tmp_path_factory.mktemp("t5"), CFG, model=encoder)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def assert_t5_mask(encoder, prompts, mask):
    """1s as a prefix that ends at the end token (id 1), <pad> (id 0) after it."""
    ids = encoder.tokenizer(prompts, max_length=120, padding="max_length", truncation=True)["input_ids"]
    for row_ids, row_mask in zip(ids, mask.tolist()):
        length = sum(row_mask)
        assert row_mask == [1] * length + [0] * (120 - length)
        assert row_ids[length - 1] == 1 and 1 not in row_ids[: length - 1]
        assert row_ids[length:] == [0] * (120 - length)


def test_encode_shapes_and_mask(encoder):
    y, mask = encoder.encode(PROMPTS)
    assert y.shape == (3, 1, 120, CFG.d_model) and y.dtype == torch.float32
    assert mask.shape == (3, 120) and mask.dtype == torch.int64
    assert torch.isfinite(y).all()
    assert_t5_mask(encoder, PROMPTS, mask)
    assert mask[1].sum() == 3  # "▁a", "▁cat", "</s>": known words are single tokens


def test_long_prompt_is_truncated_to_max_length_with_end_token(encoder):
    y, mask = encoder.encode(["a turtle swimming " * 200, "a cat"])
    assert y.shape == (2, 1, 120, CFG.d_model)
    assert mask[0].sum() == 120
    assert_t5_mask(encoder, ["a turtle swimming " * 200], mask[:1])


def test_encode_rejects_a_bare_string_or_nothing(encoder):
    for bad in ("a cat", []):
        with pytest.raises(ConfigError, match="list of prompts"):
            encoder.encode(bad)


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(encoder):
    state = torch.get_rng_state()
    again = TextEncoder.from_random_weights(CFG, device="cpu", seed=0)
    other = TextEncoder.from_random_weights(CFG, device="cpu", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])
    assert not torch.equal(other.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])


def test_from_pretrained_local_folder_gives_identical_outputs(encoder, t5_dir):
    assert (t5_dir / "model.safetensors.index.json").is_file()  # sharded, like the released T5-XXL
    loaded = TextEncoder.from_pretrained(str(t5_dir), device="cpu")
    y, mask = loaded.encode(PROMPTS)
    y_ref, mask_ref = encoder.encode(PROMPTS)
    assert torch.equal(mask, mask_ref) and torch.equal(y, y_ref)


def test_from_pretrained_hub_id_offline_gives_identical_outputs(encoder, t5_dir, offline_cache):
    make_hub_cache_repo(offline_cache, "DeepFloyd/t5-tiny", t5_dir)
    loaded = TextEncoder.from_pretrained("DeepFloyd/t5-tiny", device="cpu")
    assert torch.equal(loaded.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])


def test_sentencepiece_folder_like_deepfloyd(encoder, tmp_path):
    """spiece.model + a T5Tokenizer config at the root, as in DeepFloyd/t5-v1_1-xxl."""
    folder = make_tiny_t5_dir(tmp_path / "t5", CFG, model=encoder, spiece=True)
    assert not (folder / "tokenizer.json").exists()
    loaded = TextEncoder.from_pretrained(str(folder), device="cpu")
    tokenizer = loaded.tokenizer
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    y, mask = loaded.encode(PROMPTS)
    assert_t5_mask(loaded, PROMPTS, mask)
    y_ref, _ = TextEncoder(encoder.model, tokenizer).encode(PROMPTS)
    assert torch.equal(y, y_ref)


def test_bf16_encode_is_close_to_fp32(encoder, t5_dir):
    loaded = TextEncoder.from_pretrained(str(t5_dir), device="cpu", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    y, _ = loaded.encode(PROMPTS)
    y_ref, _ = encoder.encode(PROMPTS)
    assert y.dtype == torch.bfloat16
    rel = ((y.double() - y_ref.double()).norm() / y_ref.double().norm()).item()
    assert rel < 5e-2
    random_bf16 = TextEncoder.from_random_weights(CFG, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in random_bf16.model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32


def test_fp16_keeps_the_ffn_output_in_fp32_like_from_pretrained(t5_dir):
    random_fp16 = TextEncoder.from_random_weights(CFG, device="cpu", dtype=torch.float16)
    loaded_fp16 = TextEncoder.from_pretrained(str(t5_dir), device="cpu", dtype=torch.float16)
    dtypes = {name: p.dtype for name, p in random_fp16.model.named_parameters()}
    assert dtypes == {name: p.dtype for name, p in loaded_fp16.model.named_parameters()}
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wo.weight"] == torch.float32
    assert dtypes["shared.weight"] == random_fp16.dtype == torch.float16


def test_folder_of_another_model_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="DeepFloyd/t5-v1_1-xxl"):
        TextEncoder.from_pretrained(str(tmp_path), device="cpu")


# --- hub resolution (stdit_engine.models.hub) ---------------------------------------------------

def test_missing_local_folder_is_reported_without_the_hub(tmp_path):
    for missing in (str(tmp_path / "t5"), "./weights/t5", "a/b/c"):
        with pytest.raises(CheckpointError, match="no local folder"):
            TextEncoder.from_pretrained(missing, device="cpu")
    with pytest.raises(CheckpointError, match="no T5 text encoder was given"):
        TextEncoder.from_pretrained("", device="cpu")


def test_unknown_repo_offline_says_how_to_fix(offline_cache):
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE set \\(now on\\)") as info:
        resolve_model_dir("DeepFloyd/not-in-cache", what="T5 text encoder")
    assert "hf download DeepFloyd/not-in-cache" in str(info.value)
    assert str(offline_cache) in str(info.value)


def test_a_file_given_as_model_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model_dir(str(tmp_path / "model.safetensors"), what="VAE")


def test_resolve_model_file(tmp_path, offline_cache):
    (tmp_path / "repo").mkdir()
    weights = tmp_path / "repo" / "stdit.pth"
    weights.write_bytes(b"weights")
    assert resolve_model_file(str(weights), None, what="STDiT") == weights
    assert resolve_model_file(str(tmp_path / "repo"), "stdit.pth", what="STDiT") == weights
    make_hub_cache_repo(offline_cache, "hpcai-tech/Open-Sora", tmp_path / "repo")
    cached = resolve_model_file("hpcai-tech/Open-Sora", "stdit.pth", what="STDiT")
    assert cached.read_bytes() == b"weights" and offline_cache in cached.parents
    with pytest.raises(CheckpointError, match="other.pth"):
        resolve_model_file("hpcai-tech/Open-Sora", "other.pth", what="STDiT")
    with pytest.raises(CheckpointError, match="name of the file"):
        resolve_model_file("hpcai-tech/Open-Sora", None, what="STDiT")
    with pytest.raises(CheckpointError, match="has no file 'x.pth'"):
        resolve_model_file(str(tmp_path / "repo"), "x.pth", what="STDiT")
    with pytest.raises(CheckpointError, match="no local file"):
        resolve_model_file(str(tmp_path / "missing.pth"), None, what="STDiT")


def test_each_prompt_is_encoded_on_its_own_and_rows_do_not_depend_on_their_batch(encoder):
    batches = []
    hooks = [block.layer[0].register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
             for block in encoder.model.encoder.block]
    try:
        together, mask = encoder.encode(PROMPTS)
    finally:
        for hook in hooks:
            hook.remove()
    assert batches == [1] * (len(PROMPTS) * len(encoder.model.encoder.block))  # every block, one prompt at a time
    for i, prompt in enumerate(PROMPTS):
        alone, alone_mask = encoder.encode([prompt])
        assert torch.equal(together[i], alone[0]) and torch.equal(mask[i], alone_mask[0])
    # The library's own batched forward of the same weights, unwrapped: the same values.
    library = TextEncoder.build_model(CFG).eval()
    library.load_state_dict(encoder.model.state_dict())
    tokens = encoder.tokenizer(PROMPTS, max_length=120, padding="max_length", truncation=True, return_tensors="pt")
    with torch.inference_mode():
        expected = library(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    assert torch.allclose(together[:, 0], expected, rtol=1e-6, atol=1e-6)


def test_each_block_sees_a_prompt_in_one_memory_layout_alone_and_in_a_batch(encoder):
    # GPU kernels choose by memory layout as well as by shape: T5's first block returns its position
    # bias as a permuted view, and a prompt encoded alone must not hand the next blocks that view
    # where a batch hands them its contiguous join (on the GPU they then round differently).
    blocks = encoder.model.encoder.block

    def layouts(prompts):
        seen = []

        def record(module, args, kwargs):
            tensors = [*enumerate(args), *kwargs.items()]
            seen.append([(key, tuple(value.shape), value.stride()) for key, value in tensors
                         if isinstance(value, torch.Tensor)])

        hooks = [block.layer[0].register_forward_pre_hook(record, with_kwargs=True) for block in blocks]
        try:
            encoder.encode(prompts)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    alone = layouts(PROMPTS[:1])
    together = layouts(PROMPTS)
    assert len(alone) == len(blocks) and len(together) == len(blocks) * len(PROMPTS)
    assert any(key == "position_bias" for key, _, _ in alone[1])  # the bias the first block hands on
    for call, seen in enumerate(together):
        assert seen == alone[call // len(PROMPTS)], f"block {call // len(PROMPTS)}, prompt {call % len(PROMPTS)}"


def test_rows_apart_where_the_library_batch_rounds_differently():
    # At these widths the library's batched forward rounds a row differently from the row alone (on
    # this CPU by ~3e-6); computed apart, the rows are the same bits.
    wider = dataclasses.replace(CFG, d_model=512, d_kv=64, d_ff=1024, num_layers=4, num_heads=8)
    encoder = TextEncoder.from_random_weights(wider, device="cpu")
    together, _ = encoder.encode(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        assert torch.equal(together[i], encoder.encode([prompt])[0][0])



def test_tokenizer_calls_from_threads_never_overlap(encoder):
    # A fast tokenizer applies each call's padding and truncation to its one backend before
    # tokenizing, so overlapping calls with different settings (encode pads to max_length,
    # warn_if_truncated does not) can get each other's. TextEncoder lets one call in at a time.
    inside, most_inside = 0, 0
    guard = threading.Lock()
    real = encoder.tokenizer

    def watched(*args, **kwargs):
        nonlocal inside, most_inside
        with guard:
            inside += 1
            most_inside = max(most_inside, inside)
        time.sleep(0.005)  # long enough for another thread to enter, were it let in
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                inside -= 1

    start = threading.Barrier(4)
    shapes, errors = [], []

    def work(index: int) -> None:
        try:
            start.wait(timeout=60)
            for turn in range(5):
                if (index + turn) % 2:
                    encoder.warn_if_truncated([f"a short prompt {index}"])
                else:
                    shapes.append(encoder.encode([f"a red car {turn}"])[1].shape)
        except Exception as err:  # reported in the test's thread
            errors.append(err)

    encoder.tokenizer = watched
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
    finally:
        encoder.tokenizer = real
    assert not errors and most_inside == 1
    assert set(shapes) == {(1, encoder.max_length)}
