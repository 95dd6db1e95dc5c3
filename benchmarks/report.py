"""Prints one table from a pytest-benchmark JSON: latency, peak VRAM, FLOP utilisation, and the
ratio to the reference figures of SPEC section 6; with --png, also a chart of the end-to-end runs
(sampling time and peak reserved VRAM, ours vs the reference).
Usage: python benchmarks/report.py bench.json [--png chart.png]"""
from __future__ import annotations

import json
import sys


def rows(records: list[dict]) -> list[list[str]]:
    table = []
    for record in records:
        info = record["extra_info"]
        if "t5_embedding_rel_error" in info:
            table.append([info["workload"], info["backend"], "bf16",
                          f"embedding rel. error {info['t5_embedding_rel_error']:.2e}",
                          f"STDiT output moves {info['stdit_output_rel_error']:.2e}", "-", "-"])
            continue
        if "steps_100_new" in info:  # issue 20: one placement at one preset, warm, new and cached prompts
            times = (f"100 steps {info['steps_100_new']['median_s']:.2f} s new; 20 steps "
                     f"{info['steps_20_new']['median_s']:.2f} s new / {info['steps_20_cached']['median_s']:.2f} s cached")
            table.append([info["workload"], f"{info['placement']}, T5 {info['t5_dtype'].removeprefix('torch.')}",
                          info["dtype"].removeprefix("torch."), times, f"estimate {info['estimated_peak_gib']:.2f} GiB",
                          f"{info['peak_allocated_gib']:.2f} / {info['peak_reserved_gib']:.2f} GiB",
                          f"reference reserved {info['reference_peak_reserved_gib']} GiB"])
            continue
        if "empty_triton_cache" in info:  # issue 20: the first call of a process against a warm one
            for label, run in (("empty Triton cache", info["empty_triton_cache"]), ("second process", info["second_process"])):
                table.append([f"{info['workload']}, {label}", info["backend"], info["dtype"].removeprefix("torch."),
                              f"first {run['first']['seconds']:.2f} s / warm {run['warm']['seconds']:.2f} s "
                              f"({run['first_over_warm']:.1f}x); Triton compile {run['first']['triton_compile']['seconds']:.1f} s, "
                              f"graph capture {run['first']['graph_capture']['seconds']:.2f} s",
                              f"import {run['import_s']:.1f} s, load {run['load_s']:.1f} s",
                              f"- / {run['first']['peak_reserved_gib']:.2f} GiB", "-"])
            continue
        if "breakdown_ms" in info:  # kernel time by kind
            total = sum(info["breakdown_ms"].values())
            parts = ", ".join(f"{kind} {ms:.1f}" for kind, ms in info["breakdown_ms"].items())
            table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."),
                          f"{total:.1f} ms of kernels", parts, "-", "-"])
            continue
        if "kernel_us" in info:  # one op
            rate = (f"{info['gbs']:.0f} GB/s ({info['fraction_of_ceiling']:.0%} of copy)" if "gbs" in info
                    else f"{info['tflops']:.0f} TF/s" + (f" ({info['mfu']:.0%})" if info.get("mfu") else ""))
            table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."),
                          f"{info['kernel_us']:.1f} us", rate, "-", "-"])
            continue
        if "forward_ms" in info:  # a forward variant with its compile time
            compiled = f"compile {info['compile_s']:.0f} s" if info.get("compile_s") else "no compile"
            table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."),
                          f"{info['forward_ms']:.1f} ms graphed", compiled, "-", "-"])
            continue
        if "decode_ms" in info:
            table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."),
                          f"{info['decode_ms']:.1f} ms", f"{info['frames_per_s']:.0f} frames/s", "-", "-"])
            continue
        if "export_s" in info:
            table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."),
                          f"export {info['export_s']:.0f} s", f"{info['size_gib']:.2f} GiB in {info['files']} file(s)",
                          "-", "-"])
            continue
        if "median_ms" in info:  # a forward
            latency, ref = info["median_ms"], info.get("reference_ms")
            graphed = f" ({info['graphed_ms']:.1f} ms graphed)" if "graphed_ms" in info else ""
            cells = [f"{latency:.1f} ms{graphed}", f"{info['tflops']:.0f} TF/s" + (f" ({info['mfu']:.0%})" if info.get("mfu") else "")]
        else:  # end to end
            latency, ref = info["sampling_s"], info.get("reference_sampling_s")
            cells = [f"{latency:.2f} s sampling, {info['total_s']:.2f} s total ({info['placement']})",
                     f"estimate {info['estimated_peak_gib']:.2f} GiB ({info['estimate_error']:+.0%})"]
        speedup = f"{ref / latency:.2f}x" if ref else "-"
        table.append([info["workload"], info["backend"], info["dtype"].removeprefix("torch."), *cells,
                      f"{info['peak_allocated_gib']:.2f} / {info['peak_reserved_gib']:.2f} GiB", speedup])
    return table


def main(path: str) -> None:
    data = json.load(open(path))
    env = data["benchmarks"][0]["extra_info"] if data["benchmarks"] else {}
    print(f"GPU {env.get('gpu')}, torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
          f"{data.get('datetime', '')[:10]}")
    header = ["workload", "backend", "dtype", "latency", "throughput (MFU) / memory estimate", "peak alloc / reserved", "vs reference"]
    table = [header, *rows(data["benchmarks"])]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def chart(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r["extra_info"] for r in records if "sampling_s" in r["extra_info"]]
    labels = [f"{r['workload'].split(',')[0].removeprefix('end to end ')}\n{r['placement'].split(',')[0]}"
              f"{'' if 'graph' in r['backend'] else ', no graph'}" for r in runs]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = range(len(runs))
    for ax, ours, ref, title in (
        (ax_time, [r["sampling_s"] for r in runs], [r["reference_sampling_s"] for r in runs], "sampling time, 100 steps (s)"),
        (ax_mem, [r["peak_reserved_gib"] for r in runs], [r["reference_peak_reserved_gib"] for r in runs], "peak reserved VRAM (GiB)"),
    ):
        ax.bar([i - 0.2 for i in x], ref, width=0.4, label="reference (SPEC 6, H100)", color="#bbbbbb")
        ax.bar([i + 0.2 for i in x], ours, width=0.4, label="stdit-engine", color="#2a7ab9")
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(runs[0]["gpu"] if runs else "")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1])
    if "--png" in sys.argv:
        data = json.load(open(sys.argv[1]))
        chart(data["benchmarks"], sys.argv[sys.argv.index("--png") + 1])
