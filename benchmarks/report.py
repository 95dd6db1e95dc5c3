"""Prints one table from a pytest-benchmark JSON: latency, peak VRAM, FLOP utilisation, and the
ratio to the reference figures of SPEC section 6.  Usage: python benchmarks/report.py bench.json"""
from __future__ import annotations

import json
import sys


def rows(records: list[dict]) -> list[list[str]]:
    table = []
    for record in records:
        info = record["extra_info"]
        if "median_ms" in info:  # a forward
            latency, ref = info["median_ms"], info.get("reference_ms")
            cells = [f"{latency:.1f} ms", f"{info['tflops']:.0f} TF/s" + (f" ({info['mfu']:.0%})" if info.get("mfu") else "")]
        else:  # end to end
            latency, ref = info["sampling_s"], info.get("reference_sampling_s")
            cells = [f"{latency:.2f} s sampling, {info['total_s']:.2f} s total", "-"]
        speedup = f"{ref / latency:.2f}x" if ref else "-"
        table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."), *cells,
                      f"{info['peak_allocated_gib']:.2f} / {info['peak_reserved_gib']:.2f} GiB", speedup])
    return table


def main(path: str) -> None:
    data = json.load(open(path))
    env = data["benchmarks"][0]["extra_info"] if data["benchmarks"] else {}
    print(f"GPU {env.get('gpu')}, torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
          f"{data.get('datetime', '')[:10]}")
    header = ["workload", "backend", "dtype", "latency", "throughput (MFU)", "peak alloc / reserved", "vs reference"]
    table = [header, *rows(data["benchmarks"])]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main(sys.argv[1])
