"""Inputs as users pass them (issue 8 item 8): every numpy memory layout gives the contiguous result.

Non-contiguous, Fortran-ordered, read-only, offset and reversed views reach
every backend, in this process and in a worker process (``use_ope=True``);
a Python list is refused with an error naming the input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Iterator

import numpy as np
import pytest

CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"
sys.path.insert(0, str(CONFORMANCE))

from test_conformance import BUILDERS, PackageStore  # noqa: E402

from neuropod import InputValidationError, load_neuropod  # noqa: E402


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.copy()
    view.flags.writeable = False
    return view


#: name -> a (4, 3) float32 array with the values of ``base`` in another layout.
LAYOUTS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "strided": lambda base: np.repeat(base, 2, axis=1)[:, ::2],
    "fortran": np.asfortranarray,
    "transposed": lambda base: np.ascontiguousarray(base.T).T,
    "read_only": _read_only,
    "offset_slice": lambda base: np.pad(base, 1)[1:-1, 1:-1],
    "reversed": lambda base: base[::-1].copy()[::-1],
    "reversed_columns": lambda base: base[:, ::-1].copy()[:, ::-1],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageStore]:
    packages = PackageStore(tmp_path_factory.mktemp("layouts"))
    yield packages
    packages.close()


@pytest.mark.parametrize("use_ope", [False, True], ids=["inprocess", "ope"])
@pytest.mark.parametrize("platform", sorted(BUILDERS))
def test_every_layout_gives_the_contiguous_result(store: PackageStore, platform: str, use_ope: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 3)).astype(np.float32)
    with load_neuropod(store.get(platform, "addition"), use_ope=use_ope) as model:
        expected = model.infer({"x": x, "y": y})["out"]
        for name, layout in LAYOUTS.items():
            lx, ly = layout(x), layout(y)
            assert np.array_equal(lx, x) and lx.shape == (4, 3), name
            if name != "read_only":
                assert not lx.flags.c_contiguous or name in ("reversed",), name
            got = model.infer({"x": lx, "y": ly})["out"]
            np.testing.assert_array_equal(got, expected, err_msg=f"{platform} with {name} inputs")
            np.testing.assert_array_equal(lx, x, err_msg=f"{platform} changed a {name} input")
        with pytest.raises(InputValidationError, match="'x'.*list"):
            model.infer({"x": x.tolist(), "y": y})
