"""A model's runtime error: one line, the framework's own cause first; the full traceback chained (CLI: --verbose)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require
from neuropod import InferenceError, load_neuropod
from neuropod.backends.base import cause_line
from neuropod.cli import main

torch = require("torch")

from neuropod.packagers import create_torchscript_neuropod  # noqa: E402

POSITIONS = 16  # a BERT has 512; the failure is the same past the last one
CAUSE = "RuntimeError: index out of range in self"


class Positions(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(POSITIONS, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(torch.arange(ids.shape[1]).unsqueeze(0)) + ids.unsqueeze(-1).float()


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.positions = Positions()

    def forward(self, ids: torch.Tensor):
        return {"out": self.positions(ids)}


@pytest.fixture(scope="module")
def positions_package(tmp_path_factory):
    return create_torchscript_neuropod(
        neuropod_path=tmp_path_factory.mktemp("errors") / "positions.zip",
        model_name="positions",
        module=Encoder(),
        input_spec=[{"name": "ids", "dtype": "int64", "shape": [1, "seq"]}],
        output_spec=[{"name": "out", "dtype": "float32", "shape": [1, "seq", 4]}],
    )


TOO_LONG = {"ids": np.zeros((1, POSITIONS + 4), np.int64)}


@pytest.mark.parametrize("use_ope", [False, True], ids=["in-process", "out-of-process"])
def test_the_first_line_is_the_frameworks_cause_and_the_traceback_is_chained(positions_package, use_ope):
    with load_neuropod(positions_package, use_ope=use_ope) as model:
        with pytest.raises(InferenceError) as info:
            model.infer(TOO_LONG)
    assert str(info.value) == f"TorchScript model 'positions' failed: {CAUSE}"
    # The framework's whole message (its interpreter's traceback) is on the chained exception.
    assert "Traceback of TorchScript" in str(info.value.__cause__)


def test_the_cli_prints_one_line_and_the_traceback_with_verbose(positions_package, tmp_path):
    np.save(tmp_path / "ids.npy", TOO_LONG["ids"])
    argv = ["infer", str(positions_package), "-i", f"ids={tmp_path / 'ids.npy'}"]
    quiet = CliRunner().invoke(main, argv)
    assert quiet.exit_code == 2
    lines = quiet.output.strip().splitlines()
    assert lines == [
        f"Error: InferenceError: TorchScript model 'positions' failed: {CAUSE} "
        "(neuropod --verbose shows the full traceback)"
    ]
    verbose = CliRunner().invoke(main, ["--verbose", *argv])
    assert verbose.exit_code == 2
    assert "Traceback of TorchScript" in verbose.output
    assert "The above exception was the direct cause of the following exception" in verbose.output
    assert (
        verbose.output.strip().splitlines()[-1]
        == f"Error: InferenceError: TorchScript model 'positions' failed: {CAUSE}"
    )


@pytest.mark.parametrize(
    "message, cause",
    [
        ("index out of range in self", "index out of range in self"),
        (
            "The following operation failed in the TorchScript interpreter.\n"
            "Traceback of TorchScript (most recent call last):\n"
            '  File "model.py", line 6, in forward\n'
            "    return self.pos(ids)\n"
            "RuntimeError: index out of range in self\n",
            "RuntimeError: index out of range in self",
        ),
        (
            "Graph execution error:\n\nDetected at node add defined at (most recent call last):\n"
            '  File "model.py", line 3, in call\n\n'
            "Incompatible shapes: [1,600] vs. [1,512]\n\t [[{{node add}}]] [Op:__inference_call_12]",
            "Incompatible shapes: [1,600] vs. [1,512]",
        ),
        ("", ""),
    ],
    ids=["one line", "torchscript", "tensorflow", "empty"],
)
def test_the_cause_line_of_framework_messages(message, cause):
    assert cause_line(message) == cause
