"""TorchScript models as the original's users wrote them (issue 8 item 3).

TorchScript dicts hold one value type, so the original's documented way to
return tensors and strings together is a tuple of dicts, merged into one
output dict; a name returned by two dicts is an error naming it.
"""

import zipfile
from typing import Dict, List, Tuple

import numpy as np
import pytest

from conftest import require

torch = require("torch")

from neuropod import InferenceError, load_neuropod  # noqa: E402
from neuropod.backends.torchscript.packager import create_torchscript_neuropod  # noqa: E402

MIXED_SPEC = dict(
    input_spec=[
        {"name": "x", "dtype": "float32", "shape": ("batch_size",)},
        {"name": "y", "dtype": "float32", "shape": ("batch_size",)},
    ],
    output_spec=[
        {"name": "out", "dtype": "float32", "shape": ("batch_size",)},
        {"name": "some", "dtype": "string", "shape": (None,)},
    ],
)
X = np.arange(5, dtype=np.float32)


class MixedReturn(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
        return {"out": x + y}, {"some": ["list", "of", "string"]}


class DuplicateReturn(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
        return {"out": x + y}, {"out": ["list", "of", "string"]}


def test_a_tuple_of_dicts_is_merged_into_one_output_dict(tmp_path):
    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "mixed.zip",
        model_name="mixed",
        module=torch.jit.script(MixedReturn()),
        zip_compression=zipfile.ZIP_STORED,
        test_input_data={"x": X, "y": X},
        test_expected_out={"out": X + X, "some": np.array(["list", "of", "string"])},
        **MIXED_SPEC,
    )
    with zipfile.ZipFile(path) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_STORED}
    with load_neuropod(path) as model:
        out = model.infer({"x": X, "y": np.ones(5, np.float32)})
    assert sorted(out) == ["out", "some"]
    np.testing.assert_array_equal(out["out"], X + 1)
    assert out["some"].tolist() == ["list", "of", "string"] and out["some"].dtype.kind == "U"


def test_a_name_returned_by_two_dicts_fails_packaging_naming_it(tmp_path):
    with pytest.raises((ValueError, RuntimeError), match="'out'") as info:
        create_torchscript_neuropod(
            neuropod_path=tmp_path / "dup.zip",
            model_name="dup",
            module=torch.jit.script(DuplicateReturn()),
            test_input_data={"x": X, "y": X},
            **MIXED_SPEC,
        )
    assert isinstance(info.value, InferenceError)
    assert not (tmp_path / "dup.zip").exists()
