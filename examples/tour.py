"""The demo tour: one problem, many models, one call.

Run it with ``bash scripts/dev.sh tour`` (sets everything up first).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from neuropod import ProblemDefinition, TensorSpec, load_neuropod
from neuropod.packagers import create_placeholder_neuropod, create_python_neuropod, create_torchscript_neuropod

# 1. The problem definition is the contract: any model that implements it is interchangeable.
ADDITION = ProblemDefinition(
    inputs=[TensorSpec("x", "float32", ("batch", None)), TensorSpec("y", "float32", ("batch", None))],
    outputs=[TensorSpec("out", "float32", ("batch", None))],
)
X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.full((2, 3), 0.5, dtype=np.float32)
TEST = {"test_input_data": {"x": X, "y": Y}, "test_expected_out": {"out": X + Y}}
COMMON = {"input_spec": ADDITION.to_dict()["input_spec"], "output_spec": ADDITION.to_dict()["output_spec"]}


def section(title: str) -> None:
    print(f"\n== {title}")


def package_placeholder(workdir: Path) -> Path:
    # 2. Integration can start before a real model exists.
    return create_placeholder_neuropod(workdir / "placeholder.zip", "addition", seed=1, **COMMON)


def package_torchscript(workdir: Path) -> Path:
    import torch

    class Addition(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"out": x + y}

    return create_torchscript_neuropod(
        neuropod_path=workdir / "torchscript.zip",
        model_name="addition",
        module=torch.jit.script(Addition()),
        **COMMON,
        **TEST,
    )


def package_python(workdir: Path) -> Path:
    code = workdir / "code" / "addition_model"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text(
        textwrap.dedent(
            """
            def get_model(data_root):
                def addition(x, y):
                    return {"out": x + y}
                return addition
            """
        )
    )
    return create_python_neuropod(
        neuropod_path=workdir / "python.zip",
        model_name="addition",
        data_paths=[],
        code_path_spec=[{"python_root": str(workdir / "code"), "dirs_to_package": ["addition_model"]}],
        entrypoint_package="addition_model.main",
        entrypoint="get_model",
        **COMMON,
        **TEST,
    )


def package_torch_export(workdir: Path) -> Path:
    import torch

    from neuropod.packagers import create_torch_export_neuropod

    class Addition(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"out": x + y}

    examples = {"x": np.ones((3, 4), np.float32), "y": np.ones((3, 4), np.float32)}
    return create_torch_export_neuropod(
        neuropod_path=workdir / "torch_export.zip",
        model_name="addition",
        module=Addition(),
        example_inputs=examples,
        **COMMON,
        **TEST,
    )


def package_onnx(workdir: Path) -> Path:
    from onnx import TensorProto, helper

    from neuropod.packagers import create_onnx_neuropod

    def value(name: str) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "cols"])

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["out"])], "addition", [value("x"), value("y")], [value("out")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return create_onnx_neuropod(
        neuropod_path=workdir / "onnx.zip", model_name="addition", model=model, **COMMON, **TEST
    )


def package_jax(workdir: Path) -> Path:
    from neuropod.packagers import create_jax_neuropod

    return create_jax_neuropod(
        neuropod_path=workdir / "jax.zip",
        model_name="addition",
        function=lambda x, y: {"out": x + y},
        polymorphic_shapes={"x": ["batch", "cols"], "y": ["batch", "cols"]},
        **COMMON,
        **TEST,
    )


def package_tensorflow(workdir: Path) -> Path:
    import tensorflow as tf

    from neuropod.packagers import create_tensorflow_neuropod

    return create_tensorflow_neuropod(
        neuropod_path=workdir / "tensorflow.zip",
        model_name="addition",
        model=tf.function(lambda x, y: {"out": x + y}),
        **COMMON,
        **TEST,
    )


def package_keras(workdir: Path) -> Path:
    import keras

    from neuropod.packagers import create_keras_neuropod

    x = keras.Input(shape=(None,), name="x", dtype="float32")
    y = keras.Input(shape=(None,), name="y", dtype="float32")
    model = keras.Model([x, y], {"out": keras.layers.Add()([x, y])})
    return create_keras_neuropod(
        neuropod_path=workdir / "keras.zip", model_name="addition", model=model, **COMMON, **TEST
    )


def serve(path: Path) -> None:
    import tritonclient.grpc as grpcclient

    from neuropod.serving import ModelServer, ServerConfig

    with ModelServer.from_path(path, ServerConfig(grpc_port=0, http_port=0)) as server:
        for url in (f"grpc://127.0.0.1:{server.grpc_port}/addition", f"http://127.0.0.1:{server.http_port}/addition"):
            with load_neuropod(url) as remote:
                print(f"   load_neuropod({url!r}).infer -> {remote.infer({'x': X, 'y': Y})['out'][0]}")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        inputs = [grpcclient.InferInput(name, list(a.shape), "FP32") for name, a in (("x", X), ("y", Y))]
        for tensor, array in zip(inputs, (X, Y)):
            tensor.set_data_from_numpy(array)
        print(f"   tritonclient.grpc infer -> {client.infer('addition', inputs).as_numpy('out')[0]}")
        client.close()


def ray_data(path: Path) -> None:
    import ray

    from neuropod.integrations.ray import predict_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = ray.data.from_items([{"id": i, "x": X[i % 2], "y": Y[i % 2]} for i in range(8)])
        # One actor loads the package once and runs it on batches of 4 rows; the outputs become columns.
        predictions = predict_dataset(rows, path, batch_size=4, concurrency=1)
        for row in sorted(predictions.take_all(), key=lambda r: r["id"])[:2]:
            print(f"   row {row['id']}: x = {row['x']}, out = {row['out']}")
    finally:
        ray.shutdown()


def legacy_next_to_current(current: Path, workdir: Path) -> None:
    """A package saved by torch ~1.0 (torch 2.x refuses its format) next to a current one, same call."""
    from neuropod.envs.select import environment_at

    legacy = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "legacy" / "torchscript_addition_model"
    # Packages by the original Neuropod lack platform_version_semver; this copy states what it was saved for.
    stated = workdir / "legacy"
    shutil.copytree(legacy, stated)
    config = json.loads((stated / "config.json").read_text())
    (stated / "config.json").write_text(json.dumps({**config, "platform_version_semver": "1.10.2"}))
    print("   (a first run builds its Python 3.9 + torch 1.10.2 environment: an ~840 MB download)")
    with load_neuropod(stated) as old, load_neuropod(current) as new:
        for label, model in (("legacy", old), ("current", new)):
            out = model.infer({"x": X, "y": Y})["out"]
            options = getattr(model.executor, "options", None)
            python = getattr(options, "python_executable", sys.executable)
            held = environment_at(python)
            torch_version = held.version_of("torch")
            print(f"   {label:<8} python {held.python_version:<8} torch {torch_version:<12} out[0] = {out[0]}")


def compare_everywhere(packages: List[Tuple[str, Path]], placeholder: Path) -> None:
    """Gate a model swap: every framework's package and a served copy must agree with the TorchScript one."""
    from neuropod.serving import ModelServer, ServerConfig
    from neuropod.tools import compare

    reference = packages[0][1]
    with ModelServer.from_path(reference, ServerConfig(grpc_port=0, http_port=0)) as server:
        remote = f"grpc://127.0.0.1:{server.grpc_port}/addition"
        models = [path for _, path in packages] + [remote]
        result = compare(models, batch_size=4, batches=3, progress=False)
    labels = {str(path): label for label, path in packages}
    latency = result.to_json()["latency_ms"]
    reference_p50 = latency[str(reference)]["p50"]
    print(f"   reference {packages[0][0]} (p50 {reference_p50:.3f} ms); {result.examples} random inputs from the spec")
    for agreement in result.agreements:
        label = labels.get(agreement.model, "remote copy")
        print(
            f"   {label:<14} within tolerance {agreement.fraction_within:>7.1%}   max |error| "
            f"{agreement.max_abs_error:.1e}   p50 {latency[agreement.model]['p50']:.3f} ms"
        )
    print(f"   gate: {'PASS' if result.ok else 'FAIL'}")
    # The command exits 1 past the tolerance: a CI step fails when a swapped-in model disagrees.
    command = [sys.executable, "-m", "neuropod", "compare", str(reference), str(placeholder), "--batches", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    verdict = done.stdout.splitlines()[-1]
    print(f"   neuropod compare torchscript.zip placeholder.zip -> exit {done.returncode}: {verdict}")


def run_everywhere(packages: List[Tuple[str, Path]], **load_options: object) -> None:
    """The same call for every package; a table of what came back."""
    print(f"{'model':<14}{'platform':<14}{'out[0]':<28}{'= x + y':<9}{'µs/call':>8}")
    for label, path in packages:
        with load_neuropod(path, **load_options) as model:
            out = model.infer({"x": X, "y": Y})["out"]
            start = time.perf_counter()
            for _ in range(200):
                model.infer({"x": X, "y": Y})
            micros = (time.perf_counter() - start) / 200 * 1e6
            exact = "yes" if np.array_equal(out, X + Y) else "no"
            print(f"{label:<14}{model.platform:<14}{np.array2string(out[0], precision=2):<28}{exact:<9}{micros:>8.1f}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        section("1. The problem: out = x + y, where x and y share the 'batch' dimension")
        for spec in ADDITION.inputs + ADDITION.outputs:
            print(f"   {spec.name:<4} {spec.dtype:<8} {list(spec.shape)}")

        section("2-4. A placeholder, a TorchScript model and plain Python code implement it")
        builders: List[Tuple[str, Callable[[Path], Path]]] = [
            ("placeholder", package_placeholder),
            ("torchscript", package_torchscript),
            ("python", package_python),
        ]
        packages = [(label, build(workdir)) for label, build in builders]
        for label, path in packages:
            print(f"   packaged {label:<12} -> {path.name} ({path.stat().st_size} bytes)")

        section("5. One infer call for every model (the placeholder returns random data of the right shape)")
        run_everywhere(packages)

        section("6. The same problem in every other framework: packaged, self-tested, the same answer")
        frameworks: List[Tuple[str, Callable[[Path], Path]]] = [
            ("torch.export", package_torch_export),
            ("onnx", package_onnx),
            ("jax", package_jax),
            ("tensorflow", package_tensorflow),
            ("keras", package_keras),
        ]
        more = [(label, build(workdir)) for label, build in frameworks]
        run_everywhere(packages[1:] + more)

        section("7. Bad input gets a clear error, whatever the model")
        with load_neuropod(packages[1][1]) as model:
            try:
                model.infer({"x": X, "y": np.ones((3, 3), np.float32)})
            except ValueError as exc:
                print(f"   {type(exc).__name__}: {exc}")

        section("8. Out of process: the same models in worker processes, tensors through shared memory")
        run_everywhere(packages[1:] + more[:2], use_ope=True)
        with load_neuropod(packages[1][1], use_ope=True) as model:
            x = model.allocate("x", X.shape)  # already in shared memory: no copy on the way in
            x[:] = X
            out = model.infer({"x": x, "y": Y})["out"]  # a view of shared memory
            print(f"   allocate() + infer -> {out[0]} from worker pid {model.executor.worker_pids}")

        section("9. Served over KServe v2: the same object remotely, and a client nobody here wrote")
        serve(packages[1][1])

        section("10. Offline batch inference: the TorchScript package over a Ray Dataset")
        ray_data(packages[1][1])

        section("11. Framework versions: a legacy TorchScript package in a torch 1.10 worker, next to a current one")
        legacy_next_to_current(packages[1][1], workdir)

        section("12. Swap the model safely: neuropod compare across every framework and a remote copy")
        compare_everywhere(packages[1:] + more, packages[0][1])


if __name__ == "__main__":
    main()
