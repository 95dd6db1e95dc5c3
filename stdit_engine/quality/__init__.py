"""Quality of fast samplers, measured: the analytic model (analytic.py), the trained proxy model
(proxy.py, proxy_task.py) and the harness that compares sampler configs against a reference run on
the same initial noise (harness.py, `stdit-engine quality`)."""
