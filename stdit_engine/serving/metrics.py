"""The service's counters, rendered in the Prometheus text exposition format (version 0.0.4).

Written here rather than with prometheus_client: a handful of gauges and two histograms, and one
dependency less for every deployment.
"""
from __future__ import annotations

import bisect
import threading

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{self.name}_bucket{{le="{le}"}} {cumulative}')
        out += [f"{self.name}_sum {self.sum!r}", f"{self.name}_count {cumulative}"]
        return out


def gauge(name: str, help: str, samples: dict[str, float] | float, label: str = "") -> list[str]:
    """A gauge with one sample, or one per value of `label` when `samples` is a dict."""
    out = [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
    if isinstance(samples, dict):
        out += [f'{name}{{{label}="{key}"}} {value}' for key, value in samples.items()]
    else:
        out.append(f"{name} {samples}")
    return out


class ServiceMetrics:
    """Latencies observed by the service's worker; read by `render` from the HTTP threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.step_seconds = Histogram("stdit_step_seconds", "Wall time of one denoising step of a batch.",
                                      STEP_BUCKETS)
        self.request_seconds = Histogram("stdit_request_seconds",
                                         "Submit-to-finish time of completed jobs.", REQUEST_BUCKETS)

    def observe_step(self, seconds: float) -> None:
        with self._lock:
            self.step_seconds.observe(seconds)

    def observe_request(self, seconds: float) -> None:
        with self._lock:
            self.request_seconds.observe(seconds)

    def render(self, queue_depth: int, jobs_by_state: dict[str, int], gpu_memory: dict[str, int]) -> str:
        lines = gauge("stdit_queue_depth", "Jobs waiting to start.", queue_depth)
        lines += gauge("stdit_jobs", "Jobs in the job store by state.", jobs_by_state, label="state")
        if gpu_memory:
            lines += gauge("stdit_gpu_memory_bytes", "GPU memory of the engine's device (CUDA allocator).",
                           gpu_memory, label="kind")
        with self._lock:
            lines += self.step_seconds.lines() + self.request_seconds.lines()
        return "\n".join(lines) + "\n"
