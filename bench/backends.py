"""Per-framework overhead of ``Neuropod.infer`` over calling the framework directly.

    .venv/bin/python bench/backends.py [--repeats N] [--only torchscript,onnx,...]

For each installed framework (torchscript, torch_export, onnx, jax,
tensorflow, keras) one addition model (``out = x + y``, 1-D float32) is
packaged, loaded, and timed against the plain framework call on the very
artifact the backend loaded: numpy in, the framework's own call, numpy out,
written the way a user of that framework would write it. Two cases: 1-element
inputs (per-call overhead) and 16 MB inputs (copies). The two sides run in
alternating batches in one process and medians of the batch means are
compared, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from neuropod import load_neuropod
from neuropod.loader import Neuropod

SPEC_IN = [{"name": "x", "dtype": "float32", "shape": ["n"]}, {"name": "y", "dtype": "float32", "shape": ["n"]}]
SPEC_OUT = [{"name": "out", "dtype": "float32", "shape": ["n"]}]
EXAMPLE = {"x": np.ones(4, np.float32), "y": np.ones(4, np.float32)}
Raw = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _torch_addition() -> Any:
    import torch

    class Addition(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"out": x + y}

    return Addition()


def _loaded_torch_model(path: Path) -> Tuple[Neuropod, Raw]:
    """The package loaded, and the by-hand call of the very module its backend runs."""
    import torch

    model = load_neuropod(path)
    module = model.executor.backend.module  # type: ignore[attr-defined]

    def raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(x=torch.from_numpy(x), y=torch.from_numpy(y))["out"].numpy()

    return model, raw


def torchscript(root: Path) -> Tuple[Neuropod, Raw]:
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    path = create_torchscript_neuropod(
        neuropod_path=root / "ts.zip",
        model_name="add",
        module=torch.jit.script(_torch_addition()),
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        default_input_tensor_device="CPU",
    )
    return _loaded_torch_model(path)


def torch_export(root: Path) -> Tuple[Neuropod, Raw]:
    from neuropod.packagers import create_torch_export_neuropod

    path = create_torch_export_neuropod(
        neuropod_path=root / "te.zip",
        model_name="add",
        module=_torch_addition(),
        example_inputs=EXAMPLE,
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        default_input_tensor_device="CPU",
    )
    return _loaded_torch_model(path)


def onnx(root: Path) -> Tuple[Neuropod, Raw]:
    from onnx import TensorProto, helper

    from neuropod.packagers import create_onnx_neuropod

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["out"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n"])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    path = create_onnx_neuropod(
        neuropod_path=root / "onnx.zip", model_name="add", model=proto, input_spec=SPEC_IN, output_spec=SPEC_OUT
    )
    model = load_neuropod(path)
    session = model.executor.backend.session  # type: ignore[attr-defined]

    def raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return session.run(["out"], {"x": x, "y": y})[0]  # the usual onnxruntime call

    return model, raw


def jax(root: Path) -> Tuple[Neuropod, Raw]:
    from neuropod.packagers import create_jax_neuropod

    path = create_jax_neuropod(
        neuropod_path=root / "jax.zip",
        model_name="add",
        function=lambda x, y: {"out": x + y},
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
    )
    model = load_neuropod(path)
    exported = model.executor.backend.exported  # type: ignore[attr-defined]

    def raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(exported.call([], {"x": x, "y": y})["out"])

    return model, raw


def tensorflow(root: Path) -> Tuple[Neuropod, Raw]:
    import tensorflow as tf

    from neuropod.package import open_package
    from neuropod.packagers import create_tensorflow_neuropod

    path = create_tensorflow_neuropod(
        neuropod_path=root / "tf.zip",
        model_name="add",
        model=tf.function(lambda x, y: {"out": x + y}),
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
    )
    model = load_neuropod(path)
    signature = tf.saved_model.load(str(open_package(path).data_dir / "savedmodel")).signatures["serving_default"]

    def raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return signature(x=tf.constant(x), y=tf.constant(y))["out"].numpy()

    return model, raw


def keras(root: Path) -> Tuple[Neuropod, Raw]:
    import keras as keras_module

    from neuropod.package import open_package
    from neuropod.packagers import create_keras_neuropod

    x_in = keras_module.Input(shape=(), name="x", dtype="float32")
    y_in = keras_module.Input(shape=(), name="y", dtype="float32")
    built = keras_module.Model([x_in, y_in], {"out": keras_module.layers.Add()([x_in, y_in])})
    path = create_keras_neuropod(
        neuropod_path=root / "keras.zip", model_name="add", model=built, input_spec=SPEC_IN, output_spec=SPEC_OUT
    )
    model = load_neuropod(path)
    loaded = keras_module.saving.load_model(str(open_package(path).data_dir / "model.keras"))

    def raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return keras_module.ops.convert_to_numpy(loaded({"x": x, "y": y}, training=False)["out"])

    return model, raw


#: name -> (module that must be importable, setup)
FRAMEWORKS: Dict[str, Tuple[str, Callable[[Path], Tuple[Neuropod, Raw]]]] = {
    "torchscript": ("torch", torchscript),
    "torch_export": ("torch", torch_export),
    "onnx": ("onnxruntime", onnx),
    "jax": ("jax", jax),
    "tensorflow": ("tensorflow", tensorflow),
    "keras": ("keras", keras),
}


def batch_means(
    ours: Callable[[], Any], raw: Callable[[], Any], batch: int, batches: int
) -> Tuple[List[float], List[float]]:
    """Alternate batches of the two calls; per-call means of each batch, for both."""
    ours_t: List[float] = []
    raw_t: List[float] = []
    for _ in range(batches):
        for call, sink in ((ours, ours_t), (raw, raw_t)):
            start = time.perf_counter()
            for _ in range(batch):
                call()
            sink.append((time.perf_counter() - start) / batch)
    return ours_t, raw_t


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="alternating batches per case")
    parser.add_argument("--only", default="", help="comma-separated frameworks (default: every installed one)")
    args = parser.parse_args()
    wanted = [n for n in args.only.split(",") if n] or list(FRAMEWORKS)
    cases = (("1 element", 1, 300), ("16 MB inputs", 4 * 1024 * 1024, 3))
    print(f"medians of {args.repeats} alternating batches; 'added' = Neuropod.infer - raw call")
    print(f"{'framework':<14}{'case':<14}{'raw call':>12}{'Neuropod.infer':>16}{'added':>12}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in wanted:
            module_name, setup = FRAMEWORKS[name]
            if importlib.util.find_spec(module_name) is None:
                print(f"{name:<14}skipped: {module_name} is not installed")
                continue
            model, raw = setup(Path(tmp))
            for label, elements, batch in cases:
                x = np.random.default_rng(0).random(elements, dtype=np.float32)
                y = np.random.default_rng(1).random(elements, dtype=np.float32)
                inputs = {"x": x, "y": y}
                np.testing.assert_array_equal(raw(x, y), model.infer(inputs)["out"])
                ours_t, raw_t = batch_means(
                    lambda m=model, i=inputs: m.infer(i), lambda r=raw, a=x, b=y: r(a, b), batch, args.repeats
                )
                ours_med, raw_med = statistics.median(ours_t), statistics.median(raw_t)
                unit, scale = ("µs", 1e6) if elements == 1 else ("ms", 1e3)
                print(
                    f"{name:<14}{label:<14}{raw_med * scale:>9.1f} {unit}{ours_med * scale:>13.1f} {unit}"
                    f"{(ours_med - raw_med) * 1e6:>9.1f} µs{ours_med / raw_med:>8.2f}"
                )
            model.close()


if __name__ == "__main__":
    main()
