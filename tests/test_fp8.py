"""FP8 block linears (models/fp8.py): the reference quantizer, the FP8 linear against its
dequantized math, the STDiT conversion, its fidelity, memory and refusals. The Triton quantizer's
sweep is with the other kernels' (test_kernels_triton.py)."""
import copy

import pytest
import torch
from golden import load_golden, rel_error
from torch import nn

from stdit_engine import Engine
from stdit_engine.engine.memory import STDIT_TRITON_EXTRA_TOKEN_TENSORS, estimate_memory
from stdit_engine.errors import ConfigError, DeviceError
from stdit_engine.export.exportable import check_eager
from stdit_engine.kernels.fp8_quantize import E4M3, E4M3_MAX, MIN_SCALE, quantize_rows_ref
from stdit_engine.kernels.registry import TRITON
from stdit_engine.models.fp8 import FP8GeluMLP, FP8Linear, QuantizedRows, check_fp8_supported
from stdit_engine.models.stdit import FP8_BLOCK_LINEARS
from test_stdit_golden import count_op_calls, golden_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# e4m3 keeps 3 mantissa bits: rounding to nearest is off by at most 2^-4 of the value (normal range).
E4M3_HALF_ULP = 2.0**-4


def test_reference_quantizer_scales_each_row_to_the_e4m3_range():
    x = torch.randn(6, 64) * torch.logspace(-3, 3, 6)[:, None]
    x[2] = 0.0  # an all-zero row: no division by zero
    q, scale = quantize_rows_ref(x)
    assert q.dtype == E4M3 and scale.shape == (6, 1) and scale.dtype == torch.float32
    assert torch.isfinite(q.float()).all()
    nonzero = [0, 1, 3, 4, 5]
    assert torch.equal(q.float().abs().amax(dim=1)[nonzero], torch.full((5,), E4M3_MAX))
    assert scale[2].item() == pytest.approx(MIN_SCALE) and torch.equal(q[2].float(), torch.zeros(64))
    dequantized = q.float() * scale
    normal = dequantized.abs() >= 2.0**-6 * scale  # e4m3's smallest normal, per row
    assert ((dequantized - x).abs() <= E4M3_HALF_ULP * x.abs() + 1e-12)[normal].all()


def make_fp8_linear(k=144, n=432, dtype=torch.bfloat16, gelu_input=False):
    torch.manual_seed(0)
    linear = nn.Linear(k, n).to(dtype)
    return linear, FP8Linear(copy.deepcopy(linear), gelu_input=gelu_input)


@pytest.mark.parametrize("gelu_input", [False, True], ids=["plain", "gelu-input"])
def test_fp8_linear_is_its_dequantized_math(gelu_input):
    linear, fp8 = make_fp8_linear(gelu_input=gelu_input)
    x = torch.randn(2, 10, 144, dtype=torch.bfloat16)
    out = fp8(x)
    assert out.shape == (2, 10, 432) and out.dtype == torch.bfloat16
    x8, x_scale = quantize_rows_ref(x.reshape(-1, 144), gelu_input)
    expected = (x8.float() * x_scale) @ fp8.dequantized_weight().t() + linear.bias.float()
    assert rel_error(out.reshape(-1, 432).float(), expected) < 5e-3  # the bf16 output's rounding
    # And what that costs against the bf16 linear: e4m3's rounding of both operands (a few %).
    exact = linear((torch.nn.functional.gelu(x.float(), approximate="tanh") if gelu_input else x.float()).to(x.dtype))
    assert 1e-2 < rel_error(out.float(), exact.float()) < 6e-2


def test_fp8_weights_survive_a_dtype_cast():
    _, fp8 = make_fp8_linear()
    weight = fp8.dequantized_weight()
    fp8.to(torch.float16)
    assert fp8.weight_bits.dtype == torch.uint8 and fp8.scale_bits.dtype == torch.int32
    assert torch.equal(fp8.dequantized_weight(), weight)
    assert fp8(torch.randn(3, 144, dtype=torch.float16)).dtype == torch.float16


def test_fp8_linear_takes_rows_quantized_by_their_producer():
    _, fp8 = make_fp8_linear()
    x = torch.randn(2, 10, 144, dtype=torch.bfloat16)
    values, scale = quantize_rows_ref(x.reshape(-1, 144))
    assert torch.equal(fp8(QuantizedRows(values.view(2, 10, 144), scale, x.dtype)), fp8(x))
    _, gelu_first = make_fp8_linear(gelu_input=True)
    with pytest.raises(ValueError, match="GELU"):  # its GELU would be skipped
        gelu_first(QuantizedRows(values, scale, x.dtype))


def test_fp8_linear_refuses_sizes_scaled_mm_cannot_take():
    with pytest.raises(ConfigError, match="divisible by 16"):
        FP8Linear(nn.Linear(144, 100))


@pytest.fixture(scope="module")
def golden():
    return load_golden("stdit_tiny_16x256.pt")


def golden_inputs(golden):
    return [golden[k].to(DEVICE) for k in ("x", "timestep", "y", "mask")]


def test_quantize_fp8_converts_every_block_linear_but_the_caption_kv(golden):
    model = golden_model(golden).to(torch.bfloat16)
    bytes_before = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    fp8_weights = model.fp8_weight_count()
    model.quantize_fp8()
    for block in model.blocks:
        assert isinstance(block.mlp, FP8GeluMLP) and block.mlp.fc2.gelu_input
        for parent, name in FP8_BLOCK_LINEARS:
            assert isinstance(getattr(getattr(block, parent), name), FP8Linear)
        assert type(block.cross_attn.kv_linear) is nn.Linear  # run once per generate(): kept as it is
    scales = sum(m.scale_bits.numel() * 4 for m in model.modules() if isinstance(m, FP8Linear))
    bytes_after = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert bytes_after == bytes_before - fp8_weights + scales  # a byte a weight, not two
    assert model.is_fp8 and model.quantize_fp8() is model  # converting twice changes nothing


def test_producers_hand_their_fp8_linears_quantized_rows(golden):
    """Where a norm or a residual sum feeds an FP8 linear (spatial qkv and fc1; temporal qkv, but in
    block 0, whose temporal embedding comes first, and the cross-attention query) it emits the e4m3
    rows itself; the attention outputs and fc2's GELU input are quantized apart; the final layer's
    linear stays in bf16."""
    model = golden_model(golden).to(torch.bfloat16).quantize_fp8()
    names = ("quantize_rows_fp8", "ln_modulate", "ln_modulate_fp8", "gated_residual", "gated_residual_fp8",
             "gated_residual_ln_modulate", "gated_residual_ln_modulate_fp8")
    calls = count_op_calls(model, names)
    with torch.no_grad():
        model(*golden_inputs(golden))
    depth = len(model.blocks)
    assert calls == {"quantize_rows_fp8": 4 * depth + 1, "ln_modulate_fp8": 1, "gated_residual": 1,
                     "gated_residual_fp8": 2 * depth - 1, "gated_residual_ln_modulate_fp8": 2 * depth - 1,
                     "gated_residual_ln_modulate": 1}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_fp8_forward_is_as_close_to_fp32_as_bf16(golden, backend):
    reference = golden_model(golden).to(DEVICE)
    # bf16 on the same backend: on the CPU the interpreter's bf16 rounding adds error of its own.
    bf16 = copy.deepcopy(reference).to(torch.bfloat16).set_backend(backend)
    fp8 = copy.deepcopy(reference).to(torch.bfloat16).set_backend(backend).quantize_fp8()
    with torch.no_grad():
        expected, bf16_out, out = (m(*golden_inputs(golden)) for m in (reference, bf16, fp8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    bf16_error = rel_error(bf16_out.float(), expected)
    # e4m3 with per-token scales adds some error to bf16's own, bounded here on this tiny model; at
    # full size on the GPU, test_gpu_parity.py.
    assert rel_error(out.float(), expected) <= 1.5 * bf16_error
    assert not torch.equal(out, bf16_out)


def test_fp8_backend_switch_rebinds_the_quantizer(golden):
    model = golden_model(golden).to(DEVICE).to(torch.bfloat16).quantize_fp8()
    model.set_backend("triton")
    assert all(m.quantize is TRITON.quantize_rows_fp8 for m in model.modules() if isinstance(m, FP8Linear))
    model.set_backend("eager")
    assert all(m.quantize is quantize_rows_ref for m in model.modules() if isinstance(m, FP8Linear))


def test_fp8_is_refused_where_it_cannot_run(golden, monkeypatch):
    with pytest.raises(ConfigError, match="bf16 or fp16"):
        golden_model(golden).quantize_fp8()  # fp32
    with pytest.raises(ConfigError, match="bf16 or fp16"):  # said before anything is loaded
        Engine.from_random_weights("16x256x256", device="cpu", fp8=True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(DeviceError, match="8.9 or newer.*A100 is 8.0"):
        check_fp8_supported("cuda", torch.bfloat16)
    with pytest.raises(ConfigError, match="FP8"):
        check_eager(golden_model(golden).to(torch.bfloat16).quantize_fp8())  # exports take the unquantized model


def test_fp8_engine_samples_near_the_bf16_engine():
    kwargs = dict(seed=3, num_steps=4, output="latent", progress=False)
    bf16 = Engine.from_random_weights("tiny", device="cpu", dtype=torch.bfloat16)
    fp8 = Engine.from_random_weights("tiny", device="cpu", dtype=torch.bfloat16, fp8=True)
    assert fp8.stdit.is_fp8 and not bf16.stdit.is_fp8
    prompts = ["a sea turtle swimming over a coral reef"]
    reference, latent = bf16.generate(prompts, **kwargs), fp8.generate(prompts, **kwargs)
    assert 0 < rel_error(latent.float(), reference.float()) < 5e-2


def test_fp8_memory_estimate_counts_a_byte_a_weight_and_the_mlp_peak():
    bf16 = estimate_memory("64x512x512", 1, "sequential", torch.bfloat16, vae_chunk_frames=1, backend="triton")
    fp8 = estimate_memory("64x512x512", 1, "sequential", torch.bfloat16, vae_chunk_frames=1, backend="triton",
                          fp8=True)
    saved = bf16.weights["stdit"] - fp8.weights["stdit"]
    # 28 blocks x (2 x (3C^2 + C^2) + 2C^2 + 8C^2) weights at C = 1152, one byte each saved.
    assert saved == 28 * 18 * 1152**2
    # The MLP's peak: 3 + 4 + 2 + 1 = 10 token-sized tensors (memory.py), counted from the code, where
    # the triton backend's bf16 step counts 8 from the code and 2 more fitted on a GPU (10 as well).
    token_tensor = (2 * 64 * 1024) * 1152 * 2  # the guidance pair's tokens x hidden, bf16
    assert STDIT_TRITON_EXTRA_TOKEN_TENSORS == 2
    assert fp8.denoise == bf16.denoise - saved + (10 - (8 + STDIT_TRITON_EXTRA_TOKEN_TENSORS)) * token_tensor
