"""Conformance builder for placeholder models: they conform on names, dtypes and shapes, not values."""

from __future__ import annotations

from pathlib import Path

from problems import problem_specs

from neuropod.packagers import create_placeholder_neuropod


class PlaceholderBuilder:
    platform = "placeholder"
    #: Random outputs: the suite checks names, dtypes and spec shapes only.
    checks_values = False

    def build(self, path: Path, problem: str) -> Path:
        input_spec, output_spec = problem_specs(problem)
        return create_placeholder_neuropod(
            neuropod_path=path, model_name=f"placeholder_{problem}", input_spec=input_spec, output_spec=output_spec
        )


BUILDERS = {"placeholder": PlaceholderBuilder()}
