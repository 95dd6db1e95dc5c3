"""Torch-free tests of argument types, shared by the engine's argument checks and the samplers'.

A bool is neither an integer nor a number here: `num_steps=True` or `cfg_scale=False` is a
mistake, not 1 step or a scale of 0. Numpy's scalars are accepted as Python's are.
"""
from __future__ import annotations

import numbers


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
