"""More tensors in one call than one socket message can carry descriptors for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ope_models import IDENTITY_CODE, _make

from neuropod import load_neuropod
from neuropod.ope import wire

COUNT = wire.MAX_FDS_PER_MESSAGE + 50

COPY_CODE = """
def get_model(data_root):
    def copy(**inputs):
        return {name: array.copy() for name, array in inputs.items()}

    return copy
"""


def test_hundreds_of_new_segments_each_way(tmp_path: Path):
    spec = [{"name": f"x{i}", "dtype": "float32", "shape": [None]} for i in range(COUNT)]
    identity = _make(tmp_path, "many", IDENTITY_CODE, spec, spec)
    copying = _make(tmp_path, "many_copies", COPY_CODE, spec, spec)
    inputs = {f"x{i}": np.full(3, i, np.float32) for i in range(COUNT)}
    for path in (identity, copying):  # new segments parent -> worker, then also worker -> parent
        with load_neuropod(path, use_ope=True, timeout=60) as model:
            for _ in range(2):
                out = model.infer(inputs)
                assert sorted(out) == sorted(inputs)
                assert all(np.array_equal(out[name], array) for name, array in inputs.items())
