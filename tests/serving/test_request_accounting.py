"""Every way a request ends leaves the books straight: nothing in flight, the model let go, one count.

The data plane holds the model for the length of a request (a model being
replaced closes only after) and counts requests in flight (a drain waits for
them): a request that fails, or is interrupted, must give both back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Tuple

import numpy as np
import pytest
from serving_models import make_adder

from conftest import require

require("grpc")
require("aiohttp")

from neuropod.errors import InputValidationError, ModelNotFoundError  # noqa: E402
from neuropod.serving import ModelRepository, ServedModel  # noqa: E402
from neuropod.serving.dataplane import DataPlane, InferRequest  # noqa: E402
from neuropod.serving.failures import ServerFailure  # noqa: E402
from neuropod.serving.metrics import ServerMetrics  # noqa: E402

X = np.ones((2, 3), np.float32)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Tuple[DataPlane, ServedModel]]:
    repository = ModelRepository(make_adder(tmp_path / "adder", fail_on_negative=True))
    repository.load_all()
    dataplane = DataPlane(repository, ServerMetrics(), threads=1)
    yield dataplane, repository.get("adder")
    repository.close()


def _counts(model: ServedModel) -> Tuple[int, int]:
    stats = model.statistics.as_dict(model.name, model.version)["inference_stats"]
    return stats["success"]["count"], stats["fail"]["count"]


def _settled(dataplane: DataPlane, model: ServedModel) -> None:
    assert dataplane.in_flight == 0
    assert model._users == 0


def test_a_success_counts_once_and_lets_go(plane: Any) -> None:
    dataplane, model = plane
    response = dataplane.infer_blocking(InferRequest("adder", inputs={"x": X, "y": X}), "grpc")
    np.testing.assert_array_equal(response.outputs["out"], X * 2)
    assert _counts(model) == (1, 0)
    _settled(dataplane, model)


@pytest.mark.parametrize(
    "request_, error",
    [
        (InferRequest("nope", inputs={"x": X, "y": X}), ModelNotFoundError),
        (InferRequest("adder", inputs={"x": X.astype(np.int32), "y": X}), InputValidationError),
        (InferRequest("adder", inputs={"x": X, "y": X}, outputs=["nope"]), InputValidationError),
        (InferRequest("adder", inputs={"x": -X, "y": X}), ServerFailure),  # the model raised: an internal error
    ],
    ids=["unknown model", "wrong dtype", "unknown output", "model failure"],
)
def test_a_failure_counts_once_and_lets_go(plane: Any, request_: InferRequest, error: type) -> None:
    dataplane, model = plane
    with pytest.raises(error):
        dataplane.infer_blocking(request_, "grpc")
    assert _counts(model) == (0, 0 if request_.model_name == "nope" else 1)
    _settled(dataplane, model)


@pytest.mark.parametrize("where", ["admission", "model call"])
def test_an_interrupt_goes_on_up_and_lets_go(plane: Any, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    dataplane, model = plane

    def interrupted(*args: Any) -> Any:
        raise KeyboardInterrupt

    if where == "admission":
        monkeypatch.setattr(dataplane, "_admit", interrupted)
    else:
        monkeypatch.setattr(model, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataplane.infer_blocking(InferRequest("adder", inputs={"x": X, "y": X}), "grpc")
    assert _counts(model) == (0, 0)  # neither a success nor the client's failure
    _settled(dataplane, model)
