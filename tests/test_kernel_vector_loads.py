"""The attention kernels read and write 16 bytes per thread and instruction on a GPU, which their
speed depends on (BENCHMARKS.md). Nothing numerical shows
it, so this compiles them for sm_90 here, without a GPU (Triton ships ptxas), specialized as their
launchers specialize them for STDiT's bf16 views, and reads the PTX. The compiling runs in a child
process: the tests' own process may run the kernels under Triton's interpreter, which cannot."""
import functools
import json
import os
import re
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from stdit_engine.kernels import cross_attention, temporal_attention  # noqa: E402

VECTOR_LOAD = r"ld\.global(\.\w+)*\.v4\.b32"  # 4 x 32 bits: 8 bf16 elements
SCALAR_HALF_LOAD = r"ld\.global(\.\w+)*\.b16 "


def sm90_ptx(kernel, args: dict, constexprs: dict) -> str:
    """PTX of `kernel` with pointer arguments (torch dtypes) and integer arguments (ints) typed, the
    integers divisible by 16 marked so and those equal to 1 made constants, as Triton's launcher
    does, and `constexprs` bound."""
    names = kernel.arg_names
    signature, constants, attrs = {}, {}, {}
    for name, value in args.items():
        index = (names.index(name),)
        if isinstance(value, torch.dtype):
            signature[name] = "*" + {torch.bfloat16: "bf16", torch.int64: "i64"}[value]
            attrs[index] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name], constants[index] = "constexpr", 1
        else:
            signature[name] = "i64"
            if value % 16 == 0:
                attrs[index] = [["tt.divisibility", 16]]
    for name, value in constexprs.items():
        signature[name], constants[(names.index(name),)] = "constexpr", value
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]


def cross_attention_ptx(align: int) -> str:
    """The caption cross-attention at 16x256x256 batch 4: q [4, 16, 4096, 72] and k, v views of
    the projections, output [4, 4096, 16, 72]."""
    c, caption = 1152, 120
    strides = dict(sq_b=4096 * c, sq_h=72, sq_n=c, sq_d=1, sk_b=caption * 2 * c, sk_h=72, sk_l=2 * c, sk_d=1,
                   sv_b=caption * 2 * c, sv_h=72, sv_l=2 * c, sv_d=1, so_b=4096 * c, so_h=72, so_n=c, so_d=1)
    pointers = dict(q_ptr=torch.bfloat16, k_ptr=torch.bfloat16, v_ptr=torch.bfloat16, lengths_ptr=torch.int64,
                    o_ptr=torch.bfloat16)
    return sm90_ptx(cross_attention._flash_attention_kernel,
                    {**pointers, "N": 4096, "H": 16, "qk_scale": 0.1, **strides},
                    dict(D=72, ALIGN=align, BLOCK_N=64, BLOCK_L=32, BLOCK_D=64, BLOCK_TAIL=16,
                         UPCAST=False))


def temporal_attention_ptx(align: int) -> str:
    """Temporal attention at 16x256x256 batch 4: q, k, v [4, 256, 16, 16, 72] views of the qkv
    projection of [B, T, S, 3C] tokens, output [4, 16, 256, 16, 72]."""
    c, s = 1152, 256
    strides = {}
    for p in "qkv":
        strides.update({f"s{p}_b": 16 * s * 3 * c, f"s{p}_s": 3 * c, f"s{p}_h": 72, f"s{p}_t": s * 3 * c, f"s{p}_d": 1})
    strides.update(so_b=16 * s * c, so_s=c, so_h=72, so_t=s * c, so_d=1)
    pointers = dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "o_ptr"), torch.bfloat16)
    return sm90_ptx(temporal_attention._temporal_attention_kernel,
                    {**pointers, "S": s, "H": 16, "T": 16, "sm_scale": 0.1, **strides},
                    dict(D=72, ALIGN=align, BLOCK_T=16, BLOCK_D=128, UPCAST=False))


PTX_OF = {"cross": cross_attention_ptx, "temporal": temporal_attention_ptx}
ALIGNMENTS = (8, 1)


@functools.lru_cache(maxsize=None)
def compiled_ptx() -> dict:
    """{kernel: {alignment: PTX}} for every kernel of PTX_OF, from one child process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return {kernel: {int(align): ptx for align, ptx in by_align.items()}
            for kernel, by_align in json.loads(done.stdout).items()}


@pytest.mark.parametrize("kernel", list(PTX_OF))
def test_attention_kernels_load_16_bytes_at_a_time(kernel):
    vectorized, unaligned = (compiled_ptx()[kernel][align] for align in ALIGNMENTS)
    assert re.search(VECTOR_LOAD, vectorized) and not re.search(SCALAR_HALF_LOAD, vectorized)
    # What the kernels compiled to before the launcher vouched for the alignment: element by element.
    assert re.search(SCALAR_HALF_LOAD, unaligned) and not re.search(VECTOR_LOAD, unaligned)


if __name__ == "__main__":
    print(json.dumps({kernel: {align: ptx_of(align) for align in ALIGNMENTS} for kernel, ptx_of in PTX_OF.items()}))
