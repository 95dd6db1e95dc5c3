"""Running calls in threads released together, for the concurrency tests (bounded in time)."""
import threading


def run_together(calls, timeout_s: float = 300.0) -> list:
    """Runs each call in its own thread, all released at once; returns their results in order and
    re-raises the first error."""
    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def worker(i):
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as error:  # re-raised below, in the test's thread
            results[i] = error

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    assert not any(thread.is_alive() for thread in threads), "a concurrent call did not finish in time"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
