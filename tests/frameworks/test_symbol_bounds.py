"""Spec symbols with bounds: one form (``("seq", 1, 512)`` in a shape), checked at infer, handed to torch.export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require
from neuropod import InputValidationError, PackageError, SpecError, load_neuropod
from neuropod.packagers import create_placeholder_neuropod
from neuropod.spec import ProblemDefinition, TensorSpec

IDS = {"name": "ids", "dtype": "int64", "shape": [1, ("seq", 1, 16)]}
OUT = {"name": "out", "dtype": "float32", "shape": [1, "seq", 4]}


def test_a_bounded_symbol_is_its_name_in_the_shape_and_round_trips_through_json():
    spec = TensorSpec.from_dict(IDS)
    assert spec.shape == (1, "seq") and spec.symbol_bounds == {"seq": (1, 16)}
    written = json.loads(json.dumps(spec.to_dict()))
    assert written["shape"] == [1, ["seq", 1, 16]]
    assert TensorSpec.from_dict(written) == spec
    open_ended = TensorSpec("x", "float32", [("n", 2, None)])
    assert open_ended.symbol_bounds == {"n": (2, None)} and open_ended.to_dict()["shape"] == [["n", 2, None]]


@pytest.mark.parametrize(
    "shape, message",
    [
        ([("seq", 5, 2)], "the highest is below the lowest"),
        ([("seq", -1, 2)], "the lowest size of symbol 'seq' must be an int >= 0"),
        ([("seq", 1)], "a bounded symbol is (name, lowest, highest)"),
        ([("seq", 1, 4), ("seq", 1, 8)], "symbol 'seq' has two bounds, [1, 4] and [1, 8]"),
    ],
)
def test_malformed_bounds_are_spec_errors(shape, message):
    with pytest.raises(SpecError) as info:
        TensorSpec("x", "float32", shape)
    assert message in str(info.value)


def test_one_symbol_bounded_two_ways_in_a_problem_is_refused():
    with pytest.raises(SpecError, match=r"symbol 'seq' is bounded \[1, 16\] by 'ids' but \[1, 8\] by 'out'"):
        ProblemDefinition([IDS], [{"name": "out", "dtype": "float32", "shape": [1, ("seq", 1, 8)]}])
    problem = ProblemDefinition([IDS], [OUT])  # a bound on one use holds for every use
    assert problem.inputs[0].symbol_bounds == {"seq": (1, 16)}


@pytest.mark.parametrize("use_ope", [False, True], ids=["in-process", "out-of-process"])
def test_infer_refuses_a_size_outside_the_bounds_naming_symbol_value_and_bound(tmp_path, use_ope):
    path = create_placeholder_neuropod(tmp_path / "p", "p", input_spec=[IDS], output_spec=[OUT])
    with load_neuropod(path, use_ope=use_ope) as model:
        assert model.inputs[0]["shape"] == [1, ["seq", 1, 16]]
        assert model.infer({"ids": np.zeros((1, 16), np.int64)})["out"].shape == (1, 16, 4)
        for size in (17, 0):
            with pytest.raises(InputValidationError) as info:
                model.infer({"ids": np.zeros((1, size), np.int64)})
            assert str(info.value) == (
                f"input 'ids': symbol 'seq' in dimension 1 is {size}, outside its bounds [1, 16]"
            )


def _position_encoder():
    """A BERT's position table in small: a buffer of 16 positions, sliced to the sequence."""
    torch = require("torch")

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(16, 4)
            self.register_buffer("position_ids", torch.arange(16).unsqueeze(0), persistent=False)

        def forward(self, ids):
            positions = self.position_ids[:, : ids.shape[1]]
            return {"out": self.table(positions) + ids.unsqueeze(-1).float()}

    return Encoder()


def test_torch_export_gets_the_bounds_as_dims(tmp_path):
    require("torch")
    from neuropod.packagers import create_torch_export_neuropod

    options = dict(model_name="enc", output_spec=[OUT], test_input_data={"ids": np.zeros((1, 5), np.int64)})
    unbounded = [{"name": "ids", "dtype": "int64", "shape": [1, "seq"]}]
    with pytest.raises(PackageError) as info:
        create_torch_export_neuropod(tmp_path / "a", module=_position_encoder(), input_spec=unbounded, **options)
    message = str(info.value)
    assert "Constraints violated (seq)" in message.splitlines()[0]
    assert "torch suggests:\n  seq = Dim('seq', max=16)" in message
    assert "('seq', 1, 512)" in message and "dynamic_shapes=" in message and "ExportedProgram" in message
    assert info.value.__cause__ is not None

    path = create_torch_export_neuropod(tmp_path / "b", module=_position_encoder(), input_spec=[IDS], **options)
    with load_neuropod(path) as model:
        assert model.infer({"ids": np.zeros((1, 16), np.int64)})["out"].shape == (1, 16, 4)
        with pytest.raises(InputValidationError, match="is 17, outside its bounds"):
            model.infer({"ids": np.zeros((1, 17), np.int64)})


def test_torch_export_passes_dynamic_shapes_through(tmp_path):
    torch = require("torch")
    from neuropod.packagers import create_torch_export_neuropod

    path = create_torch_export_neuropod(
        tmp_path / "c",
        model_name="enc",
        module=_position_encoder(),
        input_spec=[{"name": "ids", "dtype": "int64", "shape": [1, "seq"]}],
        output_spec=[OUT],
        test_input_data={"ids": np.zeros((1, 5), np.int64)},
        dynamic_shapes={"ids": {1: torch.export.Dim("seq", max=16)}},
    )
    with load_neuropod(path) as model:
        assert model.infer({"ids": np.zeros((1, 9), np.int64)})["out"].shape == (1, 9, 4)
