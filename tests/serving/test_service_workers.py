"""VideoService(workers=N): N batches run at once, for an engine that spreads calls over several
devices (the Ray Serve app's RemoteEngine)."""
import threading

from stdit_engine.serving import VideoService

DEADLINE_S = 120


class RendezvousEngine:
    """The engine, whose calls each wait until `calls` of them are running at once."""

    def __init__(self, engine, calls: int):
        self.engine, self.device = engine, engine.device
        self.together = threading.Barrier(calls, timeout=DEADLINE_S)

    def generate(self, prompts, **options):
        self.together.wait()
        return self.engine.generate(prompts, **options)


def test_two_workers_run_two_batches_at_once(engine, tmp_path):
    with VideoService(RendezvousEngine(engine, calls=2), max_batch=1, workers=2, output_dir=tmp_path) as service:
        jobs = [service.submit({"prompt": f"a red car, take {i}", "num_steps": 2}) for i in range(2)]
        done = [service.wait(job.id, timeout=DEADLINE_S) for job in jobs]
    assert [job.status for job in done] == ["completed", "completed"], [job.error for job in done]
