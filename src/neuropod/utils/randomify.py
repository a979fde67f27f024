"""The original's ``neuropod.utils.randomify``: a stand-in package that returns random outputs."""

from __future__ import annotations

import os
from typing import Any, Union

from ..packagers import create_placeholder_neuropod

__all__ = ["randomify_neuropod"]


def randomify_neuropod(output_path: Union[str, os.PathLike[str]], input_spec: Any, output_spec: Any) -> Any:
    """Write a package named ``random_model`` implementing the specs with random outputs; return ``output_path``.

    The original built a TensorFlow graph; this is the framework-free
    placeholder package (platform ``placeholder``): output symbols take their
    size from the inputs, other free dimensions size 2, the same inputs give
    the same outputs, and every input is optional (as the original's graph
    did not need them).
    """
    create_placeholder_neuropod(output_path, "random_model", input_spec, output_spec, inputs_optional=True)
    return output_path
