"""STDiT-XL/2 of Open-Sora v1.0 (SPEC section 2): the one model definition.

Parameter names match the released checkpoints. Every hot op goes through the `Ops` of a kernel
backend resolved once in the constructor, so the same module runs the eager reference or the fast
kernels.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .fp8 import FP8GeluMLP, FP8Linear, QuantizedRows, check_fp8_supported
from ..kernels.registry import Ops, resolve_backend

LN_EPS = 1e-6
TIMESTEP_FREQ_DIM = 256
# The linears of each block that an FP8 model computes in e4m3 (with the MLP's two): all but the
# caption K/V projection, which runs once per generate(). The embedders and the final layer,
# outside the blocks, are small and stay in the model dtype.
FP8_BLOCK_LINEARS = (("attn", "qkv"), ("attn", "proj"), ("attn_temp", "qkv"), ("attn_temp", "proj"),
                     ("cross_attn", "q_linear"), ("cross_attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))


# ---------------------------------------------------------------- fixed embeddings (not learned)

def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim]: sin in the first half, cos in the second, frequencies in float64."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def spatial_pos_embed(dim: int, grid_h: int, grid_w: int, space_scale: float) -> torch.Tensor:
    """[1, grid_h*grid_w, dim]: first half of the channels encodes the column, second the row."""
    rows, cols = np.meshgrid(np.arange(grid_h) / space_scale, np.arange(grid_w) / space_scale, indexing="ij")
    emb = np.concatenate([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], axis=1)
    return torch.from_numpy(emb).float()[None]


def temporal_pos_embed(dim: int, num_frames: int, time_scale: float) -> torch.Tensor:
    """[1, num_frames, dim]."""
    return torch.from_numpy(sincos_1d(dim, np.arange(num_frames) / time_scale)).float()[None]


def timestep_features(t: torch.Tensor, dim: int = TIMESTEP_FREQ_DIM) -> torch.Tensor:
    """[B, dim] = [cos(t*w_k), sin(t*w_k)], w_k = exp(-ln(10000) k / (dim/2)), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def caption_lengths(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B] int64 caption length of every row of y [B,1,L,Cc]; mask [n,L] with n | B (or None: all L)."""
    b = y.shape[0]
    if mask is None:
        return torch.full((b,), y.shape[2], dtype=torch.long, device=y.device)
    if b % mask.shape[0]:
        raise ConfigError(f"mask has {mask.shape[0]} rows, which does not divide the batch of {b}")
    # Guidance batches pass the mask of the conditional half only: rows repeat it.
    return mask.to(y.device).long().sum(dim=1).repeat(b // mask.shape[0])


# ---------------------------------------------------------------- sub-modules (names = checkpoint keys)

class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attention) -> torch.Tensor:
        """x [B, L, C]; `attention(q, k, v)` on [B, H, L, D] views of the qkv projection."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def over_frames(self, x: torch.Tensor, attention) -> torch.Tensor:
        """x [B, T, S, C] -> [B, T, S, C], attending over T at each spatial position;
        `attention(q, k, v)` takes [B, S, H, T, D] views of the qkv projection and returns the
        output in token order [B, T, S, H, D], so the tokens are never regrouped by position."""
        b, t, s, c = x.shape
        q, k, v = self.qkv(x).view(b, t, s, 3, self.num_heads, c // self.num_heads).permute(3, 0, 2, 4, 1, 5)
        return self.proj(attention(q, k, v).reshape(b, t, s, c))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def caption_kv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, H, L, D] of the projected caption y [B, L, C]; constant over sampling steps."""
        b, n, c = y.shape
        k, v = self.kv_linear(y).view(b, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], kv_lengths: torch.Tensor, ops: Ops) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        return self.proj(ops.cross_attention(q, kv[0], kv[1], kv_lengths).reshape(b, n, c))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor, ops: Ops) -> torch.Tensor:
        return self.fc2(ops.linear_gelu(x, self.fc1.weight, self.fc1.bias))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIMESTEP_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_channels: int, dim: int, num_tokens: int):
        super().__init__()
        self.y_proj = GeluMLP(caption_channels, dim, dim)
        # The learned "null" caption of classifier-free guidance; a buffer in the checkpoints.
        self.register_buffer("y_embedding", torch.randn(num_tokens, caption_channels) / caption_channels**0.5)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)


class LocalTokens:
    """Token layout of a whole sequence on one device: the temporal view of the tokens is the same
    memory seen as [b, frames, positions, C]. parallel/exchange.py's SequenceShards is the sharded twin."""

    @staticmethod
    def to_temporal(x: torch.Tensor, b: int, frames: int, positions: int) -> torch.Tensor:
        """[b, frames*positions, C] -> [b, frames, positions, C] (a view)."""
        return x.view(b, frames, positions, x.shape[-1])

    @staticmethod
    def from_temporal(h: torch.Tensor, b: int, frames: int, positions: int) -> torch.Tensor:
        """[b, frames, positions, C] -> [b, frames*positions, C]."""
        return h.reshape(b, frames * positions, h.shape[-1])


def add_and_norm(x, pending, shift, scale, ops: Ops, for_linear: nn.Module | None = None):
    """(x plus the pending gated residual (gate, y) if any, the modulated norm of that sum): one
    fused op when a residual is pending, so the sum is not read back for the norm. When the norm
    feeds `for_linear` and that is an FP8 linear, the norm comes quantized for it (QuantizedRows),
    from the same pass."""
    if isinstance(for_linear, FP8Linear):
        if pending is None:
            return x, QuantizedRows(*ops.ln_modulate_fp8(x, shift, scale, LN_EPS), x.dtype)
        x, values, row_scale = ops.gated_residual_ln_modulate_fp8(x, *pending, shift, scale, LN_EPS)
        return x, QuantizedRows(values, row_scale, x.dtype)
    if pending is None:
        return x, ops.ln_modulate(x, shift, scale, LN_EPS)
    return ops.gated_residual_ln_modulate(x, *pending, shift, scale, LN_EPS)


def compute_attention(kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The default `attend` of a block: always compute. A step cache (engine/step_cache.py) passes
    its own, which may return a stored output of the attention `kind` instead."""
    return compute()


def add_residual(x, gate, y, ops: Ops, for_linear: nn.Module | None = None):
    """(x + gate * y, and what `for_linear` reads of that sum: the sum itself or, for an FP8 linear,
    the sum quantized for it (QuantizedRows) in the same pass)."""
    if isinstance(for_linear, FP8Linear):
        x, values, row_scale = ops.gated_residual_fp8(x, gate, y)
        return x, QuantizedRows(values, row_scale, x.dtype)
    x = ops.gated_residual(x, gate, y)
    return x, x


class STDiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        self.attn = SelfAttention(dim, num_heads)
        self.attn_temp = SelfAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.mlp = GeluMLP(dim, int(dim * mlp_ratio))

    def forward(self, x, t0, caption_kv, kv_lengths, grid: tuple[int, int], ops: Ops, temporal_pos=None,
                tokens=LocalTokens, pending=None, attend=compute_attention):
        """x [B, T*S, C] (token = t*S + s), t0 [B, 6C]; `tokens` regroups x for temporal attention
        (T is this device's frames when the sequence is sharded, see parallel/exchange.py).

        A residual is added in the same pass as the norm that reads the sum (add_and_norm). The
        block's last residual has no norm of its own after it, so it is returned pending, as
        (gate, y), for the next block's first norm or the final layer's; `pending` is the previous
        block's. Returns (x, pending): the block's output is x + gate * y. `attend(kind, compute)`
        gives the output (projected) of the "spatial", "temporal" or "cross" attention: by default
        `compute()`; a step cache may return a stored one (engine/step_cache.py)."""
        b, n, c = x.shape
        frames, positions = grid
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(t0)

        # Spatial attention within each frame, on the modulated norm of x.
        x, h = add_and_norm(x, pending, shift_msa, scale_msa, ops, self.attn.qkv)
        h = attend("spatial",
                   lambda: self.attn(h.reshape(b * frames, positions, c), ops.self_attention).reshape(b, n, c))
        # The temporal qkv reads this sum as it is stored, unless a sequence-parallel exchange
        # regroups it or the temporal embedding is added first (block 0): then it gets x itself.
        same_memory = tokens is LocalTokens and temporal_pos is None
        x, h = add_residual(x, gate_msa, h, ops, self.attn_temp.qkv if same_memory else None)

        # Temporal attention within each spatial position, on x itself (no norm), same gate.
        h = attend("temporal", lambda: self.temporal_attention(h, grid, ops, temporal_pos, tokens))
        x, h = add_residual(x, gate_msa, h, ops, self.cross_attn.q_linear)

        # Cross-attention's residual is ungated; its query is computed from x (h: x as the query's
        # linear takes it).
        x, h = add_and_norm(x, (None, attend("cross", lambda: self.cross_attn(h, caption_kv, kv_lengths, ops))),
                            shift_mlp, scale_mlp, ops, self.mlp.fc1)
        return x, (gate_mlp, self.mlp(h, ops))

    def temporal_attention(self, h, grid: tuple[int, int], ops: Ops, temporal_pos, tokens) -> torch.Tensor:
        """Over the frames at each position; h regrouped by `tokens` is [b, all frames, this device's
        positions, C], so the full temporal embedding applies."""
        b, frames, positions = h.shape[0], *grid
        h = tokens.to_temporal(h, b, frames, positions)
        if temporal_pos is not None:
            h = h + temporal_pos[:, :, None]
        return tokens.from_temporal(self.attn_temp.over_frames(h, ops.temporal_attention), b, frames, positions)

    def modulation(self, t0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each [B, C], for t0 [B, 6C]."""
        return (self.scale_shift_table[None] + t0.view(t0.shape[0], 6, -1)).unbind(1)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, ops: Ops, pending=None) -> torch.Tensor:
        """`pending`: the last block's residual (STDiTBlock.forward), added before the norm."""
        shift, scale = (self.scale_shift_table[None] + temb[:, None]).unbind(1)
        return self.linear(add_and_norm(x, pending, shift, scale, ops)[1])


# ---------------------------------------------------------------- the model

class STDiT(nn.Module):
    def __init__(
        self,
        input_size: tuple[int, int, int],
        in_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        caption_channels: int = 4096,
        model_max_length: int = 120,
        space_scale: float = 1.0,
        time_scale: float = 1.0,
        pred_sigma: bool = True,
        backend: str = "eager",
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if any(s % p for s, p in zip(input_size, patch_size)):
            raise ConfigError(f"latent size {tuple(input_size)} is not divisible by the patch size {tuple(patch_size)}")
        self.input_size = tuple(input_size)
        self.patch_size = tuple(patch_size)
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size = hidden_size
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.grid = tuple(s // p for s, p in zip(input_size, patch_size))  # (T', H', W') in tokens
        self.ops = resolve_backend(backend)
        self.tokens = LocalTokens  # replaced by a SequenceShards when the frames are split over ranks

        self.x_embedder = PatchEmbed(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, model_max_length)
        self.blocks = nn.ModuleList(STDiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size) * self.out_channels)

        frames, rows, cols = self.grid
        # Recomputed, never loaded: released files may carry stale copies, which are ignored. They go
        # to the device the model is built on (a torch.device context), except meta, where the
        # parameters wait for a checkpoint but these would never be filled: they stay on the CPU.
        device = torch.empty(0).device
        device = torch.device("cpu") if device.type == "meta" else device
        self.register_buffer("pos_embed", spatial_pos_embed(hidden_size, rows, cols, space_scale).to(device),
                             persistent=False)
        self.register_buffer("pos_embed_temporal", temporal_pos_embed(hidden_size, frames, time_scale).to(device),
                             persistent=False)

    def set_backend(self, backend: str) -> "STDiT":
        self.ops = resolve_backend(backend, self.pos_embed.device)
        self._bind_fp8_quantizer()
        return self

    def quantize_fp8(self) -> "STDiT":
        """Converts the block linears (FP8_BLOCK_LINEARS and the MLPs) to FP8 in place, on the device
        they are on: e4m3 weights, activations quantized per token by this backend's kernel.
        Halves those weights' memory; the output moves about as far from fp32 as bf16's own
        rounding does (models/fp8.py). Call it once the weights are loaded, in bf16 or fp16."""
        check_fp8_supported(self.x_embedder.proj.weight.device, self.dtype)
        if self.is_fp8:
            return self
        for block in self.blocks:
            for parent, name in FP8_BLOCK_LINEARS:
                if parent != "mlp":  # the MLP is converted whole: its GELU moves (FP8GeluMLP)
                    module = getattr(block, parent)
                    setattr(module, name, FP8Linear(getattr(module, name)))
            block.mlp = FP8GeluMLP(block.mlp)
        self._bind_fp8_quantizer()
        return self

    def fp8_weight_count(self) -> int:
        """Weights of the linears that quantize_fp8 stores in e4m3 (one byte each)."""
        linears = (getattr(getattr(block, parent), name) for block in self.blocks for parent, name in FP8_BLOCK_LINEARS)
        return sum(linear.in_features * linear.out_features for linear in linears)

    @property
    def is_fp8(self) -> bool:
        return any(isinstance(m, FP8Linear) for m in self.modules())

    def _bind_fp8_quantizer(self) -> None:
        for module in self.modules():
            if isinstance(module, FP8Linear):
                module.quantize = self.ops.quantize_rows_fp8

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    # -- the pieces of a forward, exposed so a sampler can compute the step-invariant ones once

    def embed_caption(self, y: torch.Tensor, mask: torch.Tensor | None) -> tuple[list, torch.Tensor]:
        """Caption K/V of every block and the caption length of every row, for y [B,1,L,Cc]."""
        return self.caption_kv(y), caption_lengths(y, mask)

    def caption_kv(self, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(K, V) of every block for the caption y [B,1,L,Cc]."""
        tokens = self.y_embedder.y_proj(y.squeeze(1).to(self.dtype), self.ops)
        return [blk.cross_attn.caption_kv(tokens) for blk in self.blocks]

    def embed_timestep(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(temb [B,C], t0 [B,6C]) for timestep [B]."""
        temb = self.t_embedder(timestep)
        return temb, self.t_block(temb)

    def forward_embedded(self, x, temb, t0, caption_kv, kv_lengths, attend=None) -> torch.Tensor:
        """x may hold a slice of the frames (sequence parallel): the patch embedding, the spatial
        position embedding and the final layer are frame-local, `self.tokens` does the rest.
        `attend(block_index, kind, compute)`: see STDiTBlock.forward (default: compute)."""
        h, grid = self.embed_tokens(x)
        h, pending = self.run_blocks(h, t0, caption_kv, kv_lengths, grid, attend)
        return self.decode_tokens(h, temb, pending)

    # The three parts of forward_embedded, apart for a step cache that skips the blocks (engine/step_cache.py).

    def embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(tokens [B, T'*S, C] of the latent x with the spatial position embedding, (T', S))."""
        b = x.shape[0]
        _, rows, cols = self.grid
        positions = rows * cols
        # Channels-last in and out of the patch convolution: the [B, tokens, C] view below is then
        # contiguous (cuDNN computes it channels-last anyway, and would otherwise transpose back).
        h = self.x_embedder.proj(x.to(self.dtype).contiguous(memory_format=torch.channels_last_3d))  # [B, C, T', H', W']
        frames = h.shape[2]
        h = h.flatten(2).transpose(1, 2).view(b, frames, positions, self.hidden_size)
        return (h + self.pos_embed.to(h.dtype)).view(b, frames * positions, self.hidden_size), (frames, positions)

    def run_blocks(self, h, t0, caption_kv, kv_lengths, grid: tuple[int, int], attend=None):
        """(x, pending) after the last block: its output is x + gate * y with pending = (gate, y)."""
        temporal_pos = self.pos_embed_temporal.to(h.dtype)
        pending = None
        for i, block in enumerate(self.blocks):
            block_attend = compute_attention if attend is None else functools.partial(attend, i)
            h, pending = block(h, t0, caption_kv[i], kv_lengths, grid, self.ops,
                               temporal_pos if i == 0 else None, self.tokens, pending, block_attend)
        return h, pending

    def decode_tokens(self, h, temb, pending=None) -> torch.Tensor:
        """The final layer on h plus the pending residual, unpatchified: [B, C_out, T, H, W]."""
        return self.unpatchify(self.final_layer(h, temb, self.ops, pending))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C_in, T, H, W], timestep [B], y [B, 1, L, Cc], mask [n, L] with n | B -> [B, C_out, T, H, W]."""
        self._check_input(x, y)
        caption_kv, kv_lengths = self.embed_caption(y, mask)
        temb, t0 = self.embed_timestep(timestep)
        return self.forward_embedded(x, temb, t0, caption_kv, kv_lengths)

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """[B, T'*H'*W', pt*ph*pw*C_out] (C_out fastest) -> [B, C_out, T, H, W]; T' may be a frame shard."""
        b = h.shape[0]
        (_, fh, fw), (pt, ph, pw) = self.grid, self.patch_size
        ft = h.shape[1] // (fh * fw)
        h = h.view(b, ft, fh, fw, pt, ph, pw, self.out_channels)
        return h.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.out_channels, ft * pt, fh * ph, fw * pw)

    def _check_input(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != (self.in_channels, *self.input_size):
            raise ConfigError(
                f"latent of shape {tuple(x.shape)} does not fit this model, which expects "
                f"[B, {self.in_channels}, {', '.join(map(str, self.input_size))}]"
            )
        if y.dim() != 4 or y.shape[0] != x.shape[0] or y.shape[-1] != self.caption_channels:
            raise ConfigError(
                f"caption of shape {tuple(y.shape)} does not fit: expected [{x.shape[0]}, 1, L, {self.caption_channels}]"
            )
