"""Several devices of one host through torch.distributed: guidance-parallel and dynamic sequence
parallel denoising (plan.py, guidance.py, exchange.py), and the text / decode stages (stages.py)."""
from .guidance import parallel_denoiser
from .plan import MODES, ParallelPlan, setup_parallel
from .stages import decode_split, encode_on_first

__all__ = ["MODES", "ParallelPlan", "decode_split", "encode_on_first", "parallel_denoiser", "setup_parallel"]
