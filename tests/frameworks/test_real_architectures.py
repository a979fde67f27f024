"""Real architectures, small enough for CI (issue 29 item 11).

A two-layer transformer built from ``torch.nn.TransformerEncoder``, packaged
with TorchScript (traced), torch.export (``seq`` bounded) and ONNX (its
export), and a small Keras CNN; each package's answer is checked against the
framework's own call in-process, out of process and served (a KServe v2
server on loopback, called through ``load_neuropod("grpc://...")``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import numpy as np
import pytest

from conftest import require
from neuropod import load_neuropod

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside Keras

SEQ = ("seq", 1, 64)  # the position table has 64 rows: a longer input is refused at infer
IDS_SPEC = [{"name": "ids", "dtype": "int64", "shape": ["batch", SEQ]}]
LOGITS_SPEC = [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", 8]}]
IDS = np.random.default_rng(1).integers(0, 100, (3, 12)).astype(np.int64)
SHORTER_IDS = IDS[:2, :5].copy()
IMAGES = np.random.default_rng(2).random((3, 16, 16, 3), dtype=np.float32)


def tiny_transformer() -> Any:
    torch = require("torch")

    class TinyTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(100, 32)
            self.position = torch.nn.Parameter(torch.randn(64, 32) * 0.02)
            layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(32, 8)

        def forward(self, ids: Any) -> Any:
            return self.head(self.encoder(self.embed(ids) + self.position[: ids.shape[1]]))

    torch.manual_seed(0)
    return TinyTransformer().eval()


def small_cnn() -> Any:
    keras = require("keras")
    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, keras.layers.Dense(4, name="scores")(x))


def torch_reference(module: Any) -> Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]:
    import torch

    def call(inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            return {"logits": module(torch.from_numpy(inputs["ids"])).numpy()}

    return call


def build_torchscript(root: Path) -> Tuple[Path, Callable]:
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    module = tiny_transformer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from the encoder's checks of its inputs
        traced = torch.jit.trace(module, torch.from_numpy(IDS), check_trace=False)
    path = create_torchscript_neuropod(
        neuropod_path=root / "torchscript.zip",
        model_name="transformer_torchscript",
        module=traced,
        input_spec=IDS_SPEC,
        output_spec=LOGITS_SPEC,
        test_input_data={"ids": IDS},
    )
    return path, torch_reference(module)


def build_torch_export(root: Path) -> Tuple[Path, Callable]:
    from neuropod.packagers import create_torch_export_neuropod

    module = tiny_transformer()
    path = create_torch_export_neuropod(
        neuropod_path=root / "torch_export.zip",
        model_name="transformer_export",
        module=module,
        input_spec=IDS_SPEC,  # the bounded seq becomes Dim("seq", min=1, max=64)
        output_spec=LOGITS_SPEC,
        test_input_data={"ids": IDS},
    )
    return path, torch_reference(module)


def build_onnx(root: Path) -> Tuple[Path, Callable]:
    require("onnxruntime")
    from neuropod.packagers import create_onnx_neuropod

    module = tiny_transformer()
    path = create_onnx_neuropod(
        neuropod_path=root / "onnx.zip",
        model_name="transformer_onnx",
        model=module,
        input_spec=IDS_SPEC,
        output_spec=LOGITS_SPEC,
        test_input_data={"ids": IDS},
    )
    return path, torch_reference(module)


def build_keras(root: Path) -> Tuple[Path, Callable]:
    from neuropod.packagers import create_keras_neuropod

    model = small_cnn()
    path = create_keras_neuropod(
        neuropod_path=root / "keras.zip",
        model_name="cnn_keras",
        model=model,
        test_input_data={"image": IMAGES},
    )
    return path, lambda inputs: {"scores": np.asarray(model(inputs["image"], training=False))}


BUILDERS = {
    "torchscript": build_torchscript,
    "torch_export": build_torch_export,
    "onnx": build_onnx,
    "keras": build_keras,
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Each framework's package and reference call (a skip reason where its framework is missing)."""
    root = tmp_path_factory.mktemp("real")
    built: Dict[str, Any] = {}
    for name, build in BUILDERS.items():
        try:
            built[name] = build(root)
        except pytest.skip.Exception as skipped:
            built[name] = str(skipped)
    return built


@pytest.fixture(scope="module")
def server(packages: Dict[str, Any]) -> Iterator[Any]:
    """One KServe v2 server on loopback serving every package that was built."""
    require("grpc")
    from neuropod.serving import ModelRepository, ModelServer, ServedModel, ServerConfig

    repository = ModelRepository()
    for name, built in packages.items():
        if not isinstance(built, str):
            repository.add(ServedModel(name, "1", load_neuropod(built[0])))
    with ModelServer(repository, ServerConfig(grpc_port=0, http_port=None)) as running:
        yield running


def inputs_of(framework: str) -> Iterator[Dict[str, np.ndarray]]:
    if framework == "keras":
        yield {"image": IMAGES}
        yield {"image": IMAGES[:1].copy()}
    else:
        yield {"ids": IDS}
        yield {"ids": SHORTER_IDS}  # another batch and seq: nothing was fixed to the example's sizes


def check_against_reference(model: Any, reference: Callable, framework: str) -> None:
    for inputs in inputs_of(framework):
        expected = reference(inputs)
        out = model.infer(inputs)
        assert list(out) == list(expected)
        for name, want in expected.items():
            assert out[name].shape == want.shape
            np.testing.assert_allclose(out[name], want, rtol=1e-4, atol=1e-5, err_msg=f"{framework} {name}")


@pytest.mark.parametrize("framework", list(BUILDERS))
@pytest.mark.parametrize("where", ["in-process", "out-of-process", "served"])
def test_real_architecture_gives_the_frameworks_answer(packages, request, framework, where):
    built = packages[framework]
    if isinstance(built, str):
        pytest.skip(built)
    path, reference = built
    if where == "served":
        port = request.getfixturevalue("server").grpc_port
        target: Any = f"grpc://127.0.0.1:{port}/{framework}"
        options: Dict[str, Any] = {}
    else:
        target, options = path, {"use_ope": where == "out-of-process"}
    with load_neuropod(target, **options) as model:
        check_against_reference(model, reference, framework)
