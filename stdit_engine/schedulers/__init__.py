"""Samplers behind one interface (base.Sampler): the reference IDDPM and the ODE samplers.

`make_sampler("dpm-solver++", num_steps=20)` builds one by name; a name may carry options after a
colon, e.g. "ddim:eta=1" (DDIM's noise scale) or "unipc:grid=quadratic" (the time grid of
ddim, dpm-solver++ and unipc: "quadratic" or "uniform"), several separated by commas.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import Sampler
from .iddpm import IDDPM
from .ode import DDIM, DPMSolverPlusPlus, ReferenceDPMSolver, UniPC

SAMPLERS: dict[str, type[Sampler]] = {
    "iddpm": IDDPM,  # the reference, the default
    "ddim": DDIM,
    "dpm-solver++": DPMSolverPlusPlus,
    "unipc": UniPC,
    "dpm-solver": ReferenceDPMSolver,
}
# The options a name may carry after a colon ("ddim:eta=1", "unipc:grid=quadratic").
OPTIONS = {"ddim": {"eta": float, "grid": str}, "dpm-solver++": {"grid": str}, "unipc": {"grid": str}}


def make_sampler(name: str, num_steps: int = 100, cfg_scale: float = 7.0,
                 guidance_channels: int | None = None) -> Sampler:
    """The sampler called `name` ("iddpm", "ddim", "ddim:eta=0.5", "dpm-solver++", "unipc",
    "unipc:grid=quadratic", "dpm-solver")."""
    if not isinstance(name, str):
        raise ConfigError(f"sampler must be a name, one of: {', '.join(SAMPLERS)}; got {name!r}")
    base, _, option_text = name.partition(":")
    if base not in SAMPLERS:
        options = "; ".join(f"{sampler}:{','.join(kinds)}" for sampler, kinds in OPTIONS.items())
        raise ConfigError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)} "
                          f"(options after a colon, e.g. ddim:eta=1 or unipc:grid=quadratic: {options})")
    options = {}
    for item in filter(None, option_text.split(",")):
        key, _, value = item.partition("=")
        kinds = OPTIONS.get(base, {})
        if key in options:
            raise ConfigError(f"sampler option {key!r} is given twice in {name!r}")
        if key not in kinds:
            valid = ", ".join(kinds) or "none"
            raise ConfigError(f"sampler {base!r} has no option {key!r} (its options: {valid})")
        try:
            options[key] = kinds[key](value)
        except ValueError:
            raise ConfigError(f"sampler option {key}={value!r} is not a {kinds[key].__name__}") from None
    return SAMPLERS[base](num_steps, cfg_scale, guidance_channels, **options)


__all__ = ["DDIM", "IDDPM", "SAMPLERS", "DPMSolverPlusPlus", "ReferenceDPMSolver", "Sampler", "UniPC", "make_sampler"]
