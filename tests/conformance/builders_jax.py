"""Conformance builder for JAX: ``jax.export`` programs.

JAX has no string dtype, so ``strings`` and ``mixed`` are not expressible.
jax is imported on first ``build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

from problems import problem_specs

from neuropod.packagers import create_jax_neuropod


def _functions() -> Dict[str, Callable[..., Any]]:
    import jax.numpy as jnp

    return {
        "addition": lambda x, y: {"out": x + y},
        "dtypes": lambda b, h, i, u: {
            "nb": jnp.logical_not(b),
            "h2": h * jnp.float16(2),
            "i2": i + jnp.int64(1),
            "u2": u + jnp.uint8(1),  # uint8 arithmetic wraps in XLA
        },
        "identity_big": lambda x: {"out": x},
    }


class JaxBuilder:
    platform = "jax"

    def build(self, path: Path, problem: str) -> Path:
        if problem in ("strings", "mixed"):
            raise NotImplementedError(f"JAX has no string dtype, which {problem!r} needs")
        input_spec, output_spec = problem_specs(problem)
        # x + y needs the two None columns to be one size: say so for the export.
        shapes = {"x": ["batch", "cols"], "y": ["batch", "cols"]} if problem == "addition" else None
        return create_jax_neuropod(
            neuropod_path=path,
            model_name=f"jax_{problem}",
            function=_functions()[problem],
            input_spec=input_spec,
            output_spec=output_spec,
            polymorphic_shapes=shapes,
        )


BUILDERS = {"jax": JaxBuilder()}
