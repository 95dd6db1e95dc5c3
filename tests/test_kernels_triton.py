"""Triton kernels against their references (DESIGN principle 2).

Without a GPU the kernels run under Triton's interpreter on CPU tensors (conftest.py turns it on),
on small shapes only; with one they run on CUDA, and `pytest -m gpu` adds STDiT's full-size shapes.
"""
import pytest
import torch

from stdit_engine.kernels import fp8_quantize
from stdit_engine.kernels import gated_residual as gated_residual_module
from stdit_engine.kernels.alignment import element_alignment
from stdit_engine.kernels.cross_attention import BLOCK_L, cross_attention_ref, cross_attention_triton, flash_attention, head_split
from stdit_engine.kernels.fp8_quantize import E4M3, quantize_rows_fp8_triton, quantize_rows_ref
from stdit_engine.kernels.gated_residual import (gated_residual_fp8_triton, gated_residual_ln_modulate_fp8_triton,
                                                 gated_residual_ln_modulate_ref, gated_residual_ln_modulate_triton,
                                                 gated_residual_ref, gated_residual_triton)
from stdit_engine.kernels.ln_modulate import ln_modulate_fp8_ref, ln_modulate_fp8_triton, ln_modulate_ref, ln_modulate_triton
from stdit_engine.kernels.temporal_attention import MAX_LEN, temporal_attention_ref, temporal_attention_triton

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in (torch.float32, torch.bfloat16, torch.float16)]
EPS = 1e-6
gpu = pytest.mark.gpu

# [B, N, C] of the row ops: batch 2n, odd token counts, hidden 144 (the tiny model) and 1152.
ROW_SHAPES = [
    (2, 15, 144),
    (1, 7, 1152),
    pytest.param((4, 16 * 256, 1152), marks=gpu),  # 16x256x256, 2 prompts x guidance
    pytest.param((2, 64 * 1024, 1152), marks=gpu),  # 64x512x512, 1 prompt x guidance
    pytest.param((3, 1 * 1024, 1152), marks=gpu),  # one frame
    pytest.param((2, 999, 1000), marks=gpu),
]
# (samples, spatial positions, frames, hidden, heads): head_dim 72 throughout.
ATTENTION_SHAPES = [
    (2, 2, 1, 144, 2),
    (2, 2, 3, 144, 2),
    (1, 2, 16, 144, 2),
    (1, 2, 64, 144, 2),
    pytest.param((4, 256, 16, 1152, 16), marks=gpu),
    pytest.param((2, 1024, 64, 1152, 16), marks=gpu),
    pytest.param((2, 1024, 1, 1152, 16), marks=gpu),
    pytest.param((3, 37, 13, 1152, 16), marks=gpu),
]

# (samples, video tokens, caption tokens, hidden, heads): the caption lengths run over 1..L, so
# over one tile of the kernel's caption loop and several.
CROSS_ATTENTION_SHAPES = [
    (2, 15, 7, 144, 2),
    (4, 70, 20, 144, 2),
    (2, 9, 1, 144, 2),
    (3, 130, 2 * BLOCK_L + 5, 144, 2),
    pytest.param((4, 16 * 256, 120, 1152, 16), marks=gpu),
    pytest.param((2, 64 * 1024, 120, 1152, 16), marks=gpu),
    pytest.param((3, 1000, 77, 1152, 16), marks=gpu),
]
# (samples, heads, queries, keys, head_dim) of the flash kernel over all its keys: one key tile and
# several, a partial last tile, head_dim 72 (a 64 + 16 split) and others that split differently
# (8, 64, 100).
HEAD_DIM_SHAPES = [
    (2, 2, 15, 15, 72),
    (1, 2, 9, 2 * BLOCK_L + 3, 72),
    (3, 1, 20, 20, 8),
    (1, 2, 33, 33, 64),
    (1, 1, 17, 17, 100),
]

# [rows, K] of the FP8 quantizer: the block linears' inputs at hidden 144 and 1152, and the MLP's 4x.
QUANTIZE_SHAPES = [
    (7, 144),
    (5, 576),
    (2, 256),  # a power of two: no padded lanes
    pytest.param((16 * 1024, 1152), marks=gpu),  # 16x256x256, 2 prompts x guidance
    pytest.param((16 * 1024, 4608), marks=gpu),
    pytest.param((999, 1000), marks=gpu),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close_to_reference(kernel_out, ref_fn, inputs, atol=1e-5):
    """The kernel's error against ref_fn run in fp32 must stay within twice the error of ref_fn run
    in the inputs' own precision, plus atol (max abs errors; tuple outputs judged item by item)."""
    exact = ref_fn(*[t.float() if torch.is_tensor(t) else t for t in inputs])
    same_precision = ref_fn(*inputs)
    if torch.is_tensor(exact):
        kernel_out, exact, same_precision = (kernel_out,), (exact,), (same_precision,)
    for out, ref, low in zip(kernel_out, exact, same_precision, strict=True):
        assert out.shape == ref.shape and out.dtype == low.dtype
        kernel_err = (out.float() - ref).abs().max().item()
        ref_err = (low.float() - ref).abs().max().item()
        assert kernel_err <= 2 * ref_err + atol, f"kernel error {kernel_err:.3g}, reference's {ref_err:.3g}"


def shape_id(shape):
    return "x".join(map(str, shape))


def rows(b, n, c, dtype):
    return torch.randn(b, n, c, device=DEVICE).to(dtype)


def modulation(b, c, dtype):
    """The six [B, C] rows as STDiT makes them: strided views unbound from one [B, 6, C] tensor."""
    return torch.randn(b, 6, c, device=DEVICE).to(dtype).unbind(1)


def frame_qkv_views(b, positions, frames, c, heads, dtype):
    """q, k, v [B, S, H, T, D] as SelfAttention.over_frames makes them: permuted views of the qkv
    projection of tokens in [B, T, S, C] order."""
    qkv = torch.randn(b, frames, positions, 3 * c, device=DEVICE).to(dtype)
    return qkv.view(b, frames, positions, 3, heads, c // heads).permute(3, 0, 2, 4, 1, 5)


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ln_modulate(shape, dtype):
    shift, scale = modulation(shape[0], shape[2], dtype)[:2]
    inputs = (rows(*shape, dtype), shift, scale, EPS)
    assert_close_to_reference(ln_modulate_triton(*inputs), ln_modulate_ref, inputs)


@pytest.mark.parametrize("rows_per_program", [1, 4])  # 4: a ragged last program at 2 x 15 tokens
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual(shape, dtype, rows_per_program, monkeypatch):
    monkeypatch.setattr(gated_residual_module, "RESIDUAL_BLOCK_ROWS", rows_per_program)
    inputs = (rows(*shape, dtype), modulation(shape[0], shape[2], dtype)[2], rows(*shape, dtype))
    assert_close_to_reference(gated_residual_triton(*inputs), gated_residual_ref, inputs)


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain sum"])
def test_gated_residual_ln_modulate(shape, dtype, gated):
    shift, scale, gate = modulation(shape[0], shape[2], dtype)[3:]
    x, y = rows(*shape, dtype), rows(*shape, dtype)
    inputs = (x, gate if gated else None, y, shift, scale, EPS)
    new_x, ln = gated_residual_ln_modulate_triton(*inputs)
    assert_close_to_reference((new_x, ln), gated_residual_ln_modulate_ref, inputs)
    # new_x is what the unfused kernel stores (a gate of ones for the plain sum: the interpreter
    # rounds to bf16 its own way), and the fused LayerNorm reads it as stored: the same as the two
    # ops one after the other, up to the order of the row sums (the two kernels spread a row over
    # different warps on a GPU).
    assert torch.equal(new_x, gated_residual_triton(x, gate if gated else torch.ones_like(gate), y))
    torch.testing.assert_close(ln, ln_modulate_triton(new_x, shift, scale, EPS))


def test_row_ops_take_strided_tokens():
    x = torch.randn(2, 144, 15, device=DEVICE).transpose(1, 2)  # [B, N, C], channels not contiguous
    y = torch.randn(2, 144, 15, device=DEVICE).transpose(1, 2)
    shift, scale, gate = modulation(2, 144, torch.float32)[:3]
    assert_close_to_reference(ln_modulate_triton(x, shift, scale, EPS), ln_modulate_ref, (x, shift, scale, EPS))
    assert_close_to_reference(gated_residual_triton(x, gate, y), gated_residual_ref, (x, gate, y))


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_temporal_attention(shape, dtype):
    q, k, v = frame_qkv_views(*shape, dtype)
    assert not q.is_contiguous()
    out = temporal_attention_triton(q, k, v)
    assert_close_to_reference(out, temporal_attention_ref, (q, k, v))
    # Stored in token order [B, T, S, H, D]: the next projection reads it without a copy.
    assert out.is_contiguous()


def caption_views(b, n, caption, c, heads, dtype):
    """q [B, H, N, D] and k, v [B, H, L, D] as CrossAttention makes them: views of its projections,
    with the caption lengths of the samples spread over 1..L."""
    q = torch.randn(b, n, c, device=DEVICE).to(dtype).view(b, n, heads, c // heads).transpose(1, 2)
    kv = torch.randn(b, caption, 2 * c, device=DEVICE).to(dtype)
    k, v = kv.view(b, caption, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    lengths = torch.linspace(1, caption, b, device=DEVICE).round().long()
    return q, k, v, lengths


@pytest.mark.parametrize("shape", CROSS_ATTENTION_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_attention(shape, dtype):
    inputs = caption_views(*shape, dtype)
    out = cross_attention_triton(*inputs)
    assert_close_to_reference(out, cross_attention_ref, inputs)
    assert out.is_contiguous()  # [B, N, H, D]: the output projection reads it without a copy


def spatial_qkv_views(frames, heads, positions, d, dtype):
    """q, k, v [B, H, S, D] as SelfAttention makes them: permuted views of the qkv projection."""
    qkv = torch.randn(frames, positions, 3 * heads * d, device=DEVICE).to(dtype)
    return qkv.view(frames, positions, 3, heads, d).permute(2, 0, 3, 1, 4)


def all_keys(k):
    """kv_lengths that let every sample see all of k [B, H, L, D]."""
    return torch.full((k.shape[0],), k.shape[2], device=k.device)


@pytest.mark.parametrize("shape", HEAD_DIM_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_flash_attention_head_dims(shape, dtype):
    """The flash kernel's head split (head_split) at head dimensions that split differently."""
    b, h, n, length, d = shape
    q = torch.randn(b, n, h, d, device=DEVICE).to(dtype).transpose(1, 2)
    k, v = torch.randn(2, b, length, h, d, device=DEVICE).to(dtype).transpose(2, 3)
    inputs = (q, k, v, all_keys(k))
    out = cross_attention_triton(*inputs)
    assert_close_to_reference(out, cross_attention_ref, inputs)
    assert out.is_contiguous()


@pytest.mark.parametrize("rows_per_program", [1, 4])
@pytest.mark.parametrize("gelu", [False, True], ids=["plain", "gelu"])
@pytest.mark.parametrize("shape", QUANTIZE_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_quantize_rows_fp8(shape, dtype, gelu, rows_per_program, monkeypatch):
    for launch in ("QUANTIZE_LAUNCH_NARROW", "QUANTIZE_LAUNCH_WIDE"):  # a ragged last program when 4
        monkeypatch.setattr(fp8_quantize, launch, (rows_per_program, getattr(fp8_quantize, launch)[1]))
    n, k = shape
    wide = (torch.randn(n, k + 32, device=DEVICE) * 3).to(dtype)
    x = wide[:, :k]  # rows with a stride wider than K, as a slice gives them
    q, scale = quantize_rows_fp8_triton(x, gelu)
    q_ref, scale_ref = quantize_rows_ref(x, gelu)
    assert q.dtype == E4M3 and q.shape == (n, k) and scale.shape == (n, 1)
    torch.testing.assert_close(scale, scale_ref, rtol=1e-6, atol=0)
    # A value near an e4m3 rounding midpoint may round the other way now and then (the GELUs differ
    # in the last bits, and so do plain values on a GPU): one step at most, and no worse for it.
    differ = q.float() != q_ref.float()
    assert differ.float().mean() <= 5e-3
    step = (q.float() - q_ref.float()).abs()[differ]
    assert (step <= 2.0**-3 * q_ref.float().abs()[differ] + 2.0**-9).all()  # an e4m3 ulp; 2^-9: its least subnormal
    exact = torch.nn.functional.gelu(x.float(), approximate="tanh") if gelu else x.float()
    assert quantization_error(q, scale, exact) <= 1.01 * quantization_error(q_ref, scale_ref, exact)


def quantization_error(values, row_scale, exact):
    """||values * row_scale - exact|| / ||exact|| over rows of exact's last axis."""
    k = exact.shape[-1]
    exact = exact.reshape(-1, k)
    return ((values.reshape(-1, k).float() * row_scale - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("producer", ["norm", "gated_residual_norm", "residual_norm", "gated_residual"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=shape_id)
@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_producers_quantized_for_fp8(shape, dtype, producer):
    """The row kernels that emit their output in e4m3 for an FP8 linear, against the reference
    (the output rounded to the dtype, then quantize_rows): as close to the fp32 output (computed from
    the kernel's own sum) as the reference's quantization is."""
    x, y = rows(*shape, dtype), rows(*shape, dtype)
    gate, shift, scale = modulation(shape[0], shape[2], dtype)[:3]
    if producer == "norm":
        (q, q_scale), (q_ref, q_scale_ref) = (op(x, shift, scale, EPS) for op in (ln_modulate_fp8_triton,
                                                                                   ln_modulate_fp8_ref))
        exact = ln_modulate_ref(x.float(), shift.float(), scale.float(), EPS)
    else:
        gate = None if producer == "residual_norm" else gate
        if producer == "gated_residual":
            new_x, q, q_scale = gated_residual_fp8_triton(x, gate, y)
            q_ref, q_scale_ref = quantize_rows_ref(new_x.reshape(-1, shape[2]))
            exact = new_x.float()
        else:
            new_x, q, q_scale = gated_residual_ln_modulate_fp8_triton(x, gate, y, shift, scale, EPS)
            # The norm's reference reads the kernel's sum, so that the sum's rounding does not count twice.
            q_ref, q_scale_ref = ln_modulate_fp8_ref(new_x, shift, scale, EPS)
            exact = ln_modulate_ref(new_x.float(), shift.float(), scale.float(), EPS)
        # The sum as the plain residual kernels are judged.
        assert_close_to_reference(new_x, lambda a, g, b: a + b if g is None else gated_residual_ref(a, g, b),
                                  (x, gate, y))
    assert q.dtype == E4M3 and q.shape == shape and q_scale.shape == (shape[0] * shape[1], 1)
    # Row scales: the amaxes a rounding or two apart (on the CPU, the interpreter truncates to bf16).
    torch.testing.assert_close(q_scale, q_scale_ref, rtol=2e-2, atol=0)
    assert quantization_error(q, q_scale, exact) <= 1.1 * quantization_error(q_ref, q_scale_ref, exact)


@pytest.mark.parametrize("d, split", [(8, (16, 0)), (16, (16, 0)), (64, (64, 0)), (72, (64, 16)), (80, (64, 16)),
                                      (100, (128, 0)), (128, (128, 0))])
def test_head_split_covers_the_head_with_little_padding(d, split):
    assert head_split(d) == split


def test_flash_attention_refuses_unsafe_key_tiles():
    q, k, v = spatial_qkv_views(1, 2, 9, 72, torch.float32)
    with pytest.raises(ValueError, match="at most 32"):
        flash_attention(q, k, v, all_keys(k), block_n=16, block_l=64, num_warps=4)


def test_cross_attention_ignores_caption_padding():
    q, k, v, lengths = caption_views(2, 5, 6, 144, 2, torch.float32)
    padded_k, padded_v = k.clone(), v.clone()
    padded_k[0, :, lengths[0]:], padded_v[0, :, lengths[0]:] = 1e4, float("nan")
    torch.testing.assert_close(cross_attention_triton(q, padded_k, padded_v, lengths),
                               cross_attention_triton(q, k, v, lengths))


def test_element_alignment_vouches_only_for_what_every_view_guarantees():
    qkv = torch.zeros(2, 16, 3 * 1152, dtype=torch.bfloat16)
    q, k, v = qkv.view(2, 16, 3, 16, 72).permute(2, 0, 3, 1, 4)  # per-head offsets of 72 elements
    assert element_alignment(q, k, v) == 8  # 16 bytes of bf16
    assert element_alignment(q.float()) == 4  # 16 bytes of fp32
    shifted = qkv.view(-1)[1:1 + 2 * 16 * 1152].view(2, 16, 16, 72)  # starts one element in
    assert element_alignment(q, shifted) == 1
    assert element_alignment(qkv.view(2, 16, 3, 1152)[..., 4:76]) == 4  # strides fine, start 4 elements in
    assert element_alignment(q.transpose(-1, -2)) == 1  # the head dimension itself strided


def test_attention_kernels_take_views_at_any_offset():
    """Views that start off the 16-byte grid take the unvectorized path, which must still be right
    (on a GPU a wrongly vouched alignment would fault or read wrong rows)."""
    base = torch.randn(1 + 2 * 3 * 16 * 3 * 144, device=DEVICE).to(torch.bfloat16)
    q, k, v = base[1:].view(2, 16, 3, 3 * 144).view(2, 16, 3, 3, 2, 72).permute(3, 0, 2, 4, 1, 5)
    assert element_alignment(q, k, v) == 1
    assert_close_to_reference(temporal_attention_triton(q, k, v), temporal_attention_ref, (q, k, v))
    sq, sk, sv = (t.permute(0, 3, 2, 1, 4).flatten(0, 1) for t in (q, k, v))  # [B*T, H, S, D] views
    inputs = (sq, sk, sv, all_keys(sk))
    assert_close_to_reference(cross_attention_triton(*inputs), cross_attention_ref, inputs)


def test_temporal_attention_rejects_long_sequences():
    with pytest.raises(ValueError, match="sdpa"):
        temporal_attention_triton(*frame_qkv_views(1, 2, MAX_LEN + 1, 144, 2, torch.float32))


def test_row_ops_reject_mismatched_modulation():
    x = rows(2, 5, 144, torch.float32)
    with pytest.raises(ValueError, match=r"expected \(2, 144\)"):
        ln_modulate_triton(x, x[:, 0], x[:, 0, :100], EPS)


@pytest.mark.parametrize(
    "op, make_args",
    [
        (ln_modulate_triton, lambda: (rows(2, 5, 144, torch.float32), *modulation(2, 144, torch.float32)[:2], EPS)),
        (gated_residual_triton, lambda: (rows(2, 5, 144, torch.float32), modulation(2, 144, torch.float32)[2],
                                         rows(2, 5, 144, torch.float32))),
        (gated_residual_ln_modulate_triton, lambda: (rows(2, 5, 144, torch.float32), *modulation(2, 144, torch.float32)[:1],
                                                     rows(2, 5, 144, torch.float32), *modulation(2, 144, torch.float32)[1:3], EPS)),
        (gated_residual_ln_modulate_triton, lambda: (rows(2, 5, 144, torch.float32), None, rows(2, 5, 144, torch.float32),
                                                     *modulation(2, 144, torch.float32)[1:3], EPS)),
        (temporal_attention_triton, lambda: tuple(frame_qkv_views(2, 3, 5, 144, 2, torch.float32))),
        (cross_attention_triton, lambda: caption_views(2, 5, 7, 144, 2, torch.float32)),
        (quantize_rows_fp8_triton, lambda: (torch.randn(5, 144, device=DEVICE).to(torch.bfloat16), True)),
        (ln_modulate_fp8_triton, lambda: (rows(2, 5, 144, torch.bfloat16), *modulation(2, 144, torch.bfloat16)[:2], EPS)),
        (gated_residual_ln_modulate_fp8_triton, lambda: (rows(2, 5, 144, torch.bfloat16),
                                                         *modulation(2, 144, torch.bfloat16)[:1],
                                                         rows(2, 5, 144, torch.bfloat16),
                                                         *modulation(2, 144, torch.bfloat16)[1:3], EPS)),
        (gated_residual_fp8_triton, lambda: (rows(2, 5, 144, torch.bfloat16), modulation(2, 144, torch.bfloat16)[2],
                                             rows(2, 5, 144, torch.bfloat16))),
    ],
    ids=["ln_modulate", "gated_residual", "gated_residual_ln_modulate", "residual_ln_modulate_without_gate", "temporal_attention", "cross_attention",
         "quantize_rows_fp8", "ln_modulate_fp8", "gated_residual_ln_modulate_fp8",
         "gated_residual_fp8"],
)
def test_custom_op_registration(op, make_args):
    """Schema, fake (meta) implementation and tracing agree with the kernel: what torch.compile,
    CUDA graphs and export rely on."""
    torch.library.opcheck(op, make_args())
