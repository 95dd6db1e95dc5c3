"""The service's default limits, in a module of their own so that the command line can show them
without importing the serving stack."""

DEFAULT_MAX_QUEUE = 16  # waiting jobs; beyond it, submissions are refused (429)
DEFAULT_MAX_BATCH = 2  # compatible jobs sharing one guidance batch (BENCHMARKS.md, constants: why 2)
DEFAULT_MAX_VIDEOS = 1000  # videos kept on disk, newest first
