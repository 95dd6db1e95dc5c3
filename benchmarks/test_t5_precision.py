"""How far bf16 T5-XXL embeddings are from fp32, and how much that moves the STDiT output
(random weights of the real architectures: a measurement of rounding, not of trained outliers)."""
import torch
from workloads import build_stdit

from stdit_engine.configs import PRESETS
from stdit_engine.models.text_encoder import TextEncoder
from stdit_engine.quality.metrics import relative_l2

PROMPTS = ["a sea turtle swimming over a coral reef", "a red vintage car driving through snow at dusk"]


def test_t5_bf16_vs_fp32(benchmark):
    preset = PRESETS["16x256x256"]
    encoder = TextEncoder.from_random_weights(preset.text, device="cuda", dtype=torch.float32)
    y32, mask = encoder.encode(PROMPTS)
    encoder.model.to(torch.bfloat16)
    y16 = benchmark.pedantic(lambda: encoder.encode(PROMPTS)[0], rounds=3, iterations=1)
    del encoder
    torch.cuda.empty_cache()
    model = build_stdit("16x256x256", torch.float16, "sdpa")
    x = torch.randn(4, 4, 16, 32, 32, device="cuda", dtype=torch.float16)
    t = torch.full((4,), 500.0, device="cuda")
    null = model.y_embedder.y_embedding[None, None].expand(2, -1, -1, -1)
    with torch.inference_mode():
        out32 = model(x, t, torch.cat([y32, null.float()]), mask)
        out16 = model(x, t, torch.cat([y16.float(), null.float()]), mask)
    benchmark.extra_info.update(
        workload="T5-XXL bf16 vs fp32 (random weights)", backend="transformers", dtype="torch.bfloat16",
        t5_embedding_rel_error=relative_l2(y16, y32), stdit_output_rel_error=relative_l2(out16, out32),
    )
