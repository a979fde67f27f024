"""The compatibility matrix: the conformance problems under many versions of each framework.

For every framework version in :data:`ROWS` this packages the conformance
problems (``tests/conformance/problems.py``: symbols, strings, several
outputs, every dtype, each also with an empty batch) pinned to that version
(``platform_version_semver``, or a pinned requirement for code packages), and
runs them through ``load_neuropod`` as a user's package would run: version
selection finds or builds the environment, and the model runs in an
out-of-process worker there. The results are written to
``docs/compatibility.md`` (and kept in ``.cache/matrix/results.json``, so a run
of some frameworks updates their rows and keeps the others).

    python scripts/matrix.py                     # everything (bash scripts/dev.sh matrix)
    python scripts/matrix.py torch onnx          # some frameworks
    python scripts/matrix.py --oldest-newest     # the CI slice: the oldest and newest of each, and the legacy rows
    python scripts/matrix.py --list              # the rows, nothing run

Environments are built at most two at a time (building is mostly downloading
and unpacking) and reused from ``$NEUROPOD_ENVS_DIR`` by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as platform_module
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "conformance"))

from problems import PROBLEMS, problem_specs  # noqa: E402

#: The problems every row runs (``identity_big`` is the main suite's: 64 MB per call adds nothing here).
CASES = ("addition", "strings", "mixed", "dtypes")
#: Every case also runs with an empty batch (its dynamic dimensions 0); a failure there is its own column.
EMPTY = "empty batch"
#: What a framework cannot express, and why (shown as n/a, not run).
INEXPRESSIBLE = {
    "torch": {"strings": "torch has no string tensors", "mixed": "torch has no string tensors"},
    "jax": {"strings": "JAX has no string dtype", "mixed": "JAX has no string dtype"},
    "keras": {"strings": "keras.ops has no string ops", "mixed": "keras.ops has no string ops"},
}
#: The Keras backend the keras rows run on (each row pins a jax of its keras's time).
KERAS_BACKEND = "jax"


@dataclass(frozen=True)
class Row:
    """One framework version: how its packages are made and what they ask for.

    Attributes:
        framework: the framework's name in the table.
        version: the version asked for (the whole version: the package pins it).
        kind: how the problems are packaged (a key of :data:`PACKAGERS`).
        requirements: pinned lines the packages carry (code packages: the framework itself; keras: its backend).
        legacy: a row of the original Neuropod's era (Python 3.7 / 3.8 workers).
        note: why this version is in the list.
    """

    framework: str
    version: str
    kind: str
    requirements: Tuple[str, ...] = ()
    legacy: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.framework} {self.version}"


def _keras(version: str, jax: str, note: str = "") -> Row:
    return Row("keras", version, "keras", (f"jax=={jax}", f"jaxlib=={jax}"), note=note or f"on jax {jax}")


#: Every row, oldest first within a framework. torch: the 1.x wheels PyPI has for Linux bundle
#: their CUDA libraries in one wheel (1.13 and 2.x pull multi-GB nvidia-* packages instead), plus
#: the CPU build of torch 2.13.0 this machine has (pip's find-links folder).
ROWS: Tuple[Row, ...] = (
    Row("torch", "1.4.0", "torch", ("torch==1.4.0",), legacy=True, note="the original's era: Python <= 3.8"),
    Row("torch", "1.8.1", "torch", ("torch==1.8.1",)),
    Row("torch", "1.10.2", "torch", ("torch==1.10.2",), note="the last that reads torch ~1.0 TorchScript"),
    Row("torch", "1.12.1", "torch", ("torch==1.12.1",), note="the last 1.x without nvidia-* packages"),
    Row("torch", "2.13.0+cpu", "torch", ("torch==2.13.0+cpu",), note="this machine's CPU build"),
    Row("tensorflow", "1.15.0", "tf_graph_def", legacy=True, note="the original's era: a TF1 frozen GraphDef"),
    Row("tensorflow", "2.12.1", "tensorflow"),
    Row("tensorflow", "2.14.1", "tensorflow"),
    Row("tensorflow", "2.16.2", "tensorflow"),
    Row("tensorflow", "2.18.1", "tensorflow"),
    Row("tensorflow", "2.21.0", "tensorflow"),
    Row("onnxruntime", "1.16.3", "onnx"),
    Row("onnxruntime", "1.19.2", "onnx"),
    Row("onnxruntime", "1.22.1", "onnx"),
    Row("onnxruntime", "1.26.0", "onnx"),
    Row("onnxruntime", "1.32.0", "onnx"),
    Row("jax", "0.4.30", "jax"),
    Row("jax", "0.4.38", "jax"),
    Row("jax", "0.5.3", "jax"),
    Row("jax", "0.7.2", "jax"),
    Row("jax", "0.10.2", "jax"),
    _keras("3.0.5", "0.4.23"),
    _keras("3.3.3", "0.4.26"),
    _keras("3.6.0", "0.4.35"),
    _keras("3.10.0", "0.6.0"),
    _keras("3.15.1", "0.10.2"),
)


def slice_rows(rows: Sequence[Row] = ROWS) -> List[Row]:
    """The CI slice: each framework's oldest and newest row, and every legacy row."""
    chosen = {row for row in rows if row.legacy}
    for framework in {row.framework for row in rows}:
        of_framework = [row for row in rows if row.framework == framework]
        chosen.update((of_framework[0], of_framework[-1]))
    return [row for row in rows if row in chosen]


# -- packaging -----------------------------------------------------------------------------------

TORCH_MODELS = textwrap.dedent(
    """
    import torch


    class Addition(torch.nn.Module):  # the original's test model: forward(x, y) -> {"out": x + y}
        def forward(self, x, y):
            return {"out": torch.from_numpy(x) + torch.from_numpy(y)}


    def addition(data_dir):
        return Addition()


    def dtypes(data_dir):
        def run(b, h, i, u):
            b, h, i, u = (torch.from_numpy(a) for a in (b, h, i, u))
            return {"nb": torch.logical_not(b), "h2": h * 2, "i2": i + 1, "u2": u + 1}

        return run
    """
)


def _package_torch(row: Row, problem: str, path: Path) -> Path:
    from neuropod.packagers import create_pytorch_neuropod

    input_spec, output_spec = problem_specs(problem)
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "torch_models").mkdir()
        (Path(root) / "torch_models" / "__init__.py").write_text(TORCH_MODELS)
        return create_pytorch_neuropod(
            neuropod_path=path,
            model_name=f"torch_{problem}",
            data_paths=[],
            code_path_spec=[{"python_root": root, "dirs_to_package": ["torch_models"]}],
            entrypoint_package="torch_models",
            entrypoint=problem,
            input_spec=input_spec,
            output_spec=output_spec,
            requirements=list(row.requirements),
        )


def _tf_functions() -> Dict[str, Callable[..., Any]]:
    import tensorflow as tf

    return {
        "addition": lambda x, y: {"out": x + y},
        "strings": lambda a, b: {"out": tf.strings.join([a, b])},
        "mixed": lambda x: {
            "total": tf.reshape(tf.reduce_sum(x), [1]),
            "label": tf.where(x > 0, tf.constant("pos"), tf.constant("neg")),
        },
        "dtypes": lambda b, h, i, u: {
            "nb": tf.logical_not(b),
            "h2": h * tf.constant(2, tf.float16),
            "i2": i + tf.constant(1, tf.int64),
            "u2": u + tf.constant(1, tf.uint8),
        },
    }


def _package_tensorflow(row: Row, problem: str, path: Path) -> Path:
    import tensorflow as tf

    from neuropod.packagers import create_tensorflow_neuropod

    input_spec, output_spec = problem_specs(problem)
    return create_tensorflow_neuropod(
        neuropod_path=path,
        model_name=f"tf_{problem}",
        model=tf.function(_tf_functions()[problem]),
        input_spec=input_spec,
        output_spec=output_spec,
        platform_version_semver=row.version,
    )


def _package_tf_graph_def(row: Row, problem: str, path: Path) -> Path:
    """A TF1 frozen GraphDef with placeholders, as the original's users packaged TensorFlow models."""
    import tensorflow as tf

    from neuropod.packagers import create_tensorflow_neuropod

    v1 = tf.compat.v1
    input_spec, output_spec = problem_specs(problem)
    graph = tf.Graph()
    with graph.as_default():
        placeholders = {
            spec["name"]: v1.placeholder(
                tf.as_dtype(_np_dtype(spec["dtype"])), [None] * len(spec["shape"]), spec["name"]
            )
            for spec in input_spec
        }
        outputs = _tf_functions()[problem](**placeholders)
        for name, tensor in outputs.items():
            tf.identity(tensor, name=name)
    return create_tensorflow_neuropod(
        neuropod_path=path,
        model_name=f"tf1_{problem}",
        graph_def=graph.as_graph_def(),
        node_name_mapping={spec["name"]: f"{spec['name']}:0" for spec in input_spec + output_spec},
        input_spec=input_spec,
        output_spec=output_spec,
        platform_version_semver=row.version,
    )


def _np_dtype(name: str) -> Any:
    return np.dtype(str) if name == "string" else np.dtype(name)


def _onnx_graph(problem: str) -> Any:
    from onnx import TensorProto, helper

    def value(name: str, dtype: int) -> Any:
        spec = next(s for s in sum(problem_specs(problem), []) if s["name"] == name)
        return helper.make_tensor_value_info(name, dtype, spec["shape"])

    def const(name: str, dtype: int, values: List[Any]) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [], values))

    f32, string, f16 = TensorProto.FLOAT, TensorProto.STRING, TensorProto.FLOAT16
    i64, u8, boolean = TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL
    opset, ir_version = 17, 8  # what onnxruntime 1.16 reads
    if problem == "addition":
        nodes = [helper.make_node("Add", ["x", "y"], ["out"])]
        inputs, outputs = [value("x", f32), value("y", f32)], [value("out", f32)]
    elif problem == "strings":
        nodes = [helper.make_node("StringConcat", ["a", "b"], ["out"])]
        inputs, outputs = [value("a", string), value("b", string)], [value("out", string)]
        opset, ir_version = 20, 9  # StringConcat is new in opset 20
    elif problem == "mixed":
        nodes = [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=1),
            const("zero", f32, [0.0]),
            helper.make_node("Greater", ["x", "zero"], ["positive"]),
            const("pos", string, [b"pos"]),
            const("neg", string, [b"neg"]),
            helper.make_node("Where", ["positive", "pos", "neg"], ["label"]),
        ]
        inputs, outputs = [value("x", f32)], [value("total", f32), value("label", string)]
    else:
        nodes = [
            helper.make_node("Not", ["b"], ["nb"]),
            const("two", f16, [2.0]),
            helper.make_node("Mul", ["h", "two"], ["h2"]),
            const("one64", i64, [1]),
            helper.make_node("Add", ["i", "one64"], ["i2"]),
            const("one8", u8, [1]),
            helper.make_node("Add", ["u", "one8"], ["u2"]),
        ]
        inputs = [value("b", boolean), value("h", f16), value("i", i64), value("u", u8)]
        outputs = [value("nb", boolean), value("h2", f16), value("i2", i64), value("u2", u8)]
    graph = helper.make_graph(nodes, problem, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _package_onnx(row: Row, problem: str, path: Path) -> Path:
    from neuropod.packagers import create_onnx_neuropod

    input_spec, output_spec = problem_specs(problem)
    return create_onnx_neuropod(
        neuropod_path=path,
        model_name=f"onnx_{problem}",
        model=_onnx_graph(problem),
        input_spec=input_spec,
        output_spec=output_spec,
        platform_version_semver=row.version,
    )


def _package_jax(row: Row, problem: str, path: Path) -> Path:
    import jax.numpy as jnp

    from neuropod.packagers import create_jax_neuropod

    functions: Dict[str, Callable[..., Any]] = {
        "addition": lambda x, y: {"out": x + y},
        "dtypes": lambda b, h, i, u: {
            "nb": jnp.logical_not(b),
            "h2": h * jnp.float16(2),
            "i2": i + jnp.int64(1),
            "u2": u + jnp.uint8(1),
        },
    }
    input_spec, output_spec = problem_specs(problem)
    return create_jax_neuropod(
        neuropod_path=path,
        model_name=f"jax_{problem}",
        function=functions[problem],
        input_spec=input_spec,
        output_spec=output_spec,
        polymorphic_shapes={"x": ["batch", "cols"], "y": ["batch", "cols"]} if problem == "addition" else None,
        platform_version_semver=row.version,
    )


def _package_keras(row: Row, problem: str, path: Path) -> Path:
    import keras

    from neuropod.packagers import create_keras_neuropod

    if problem == "addition":
        x = keras.Input(shape=(None,), name="x", dtype="float32")
        y = keras.Input(shape=(None,), name="y", dtype="float32")
        model = keras.Model([x, y], {"out": keras.layers.Add()([x, y])})
    else:
        b = keras.Input(shape=(), name="b", dtype="bool")
        h = keras.Input(shape=(), name="h", dtype="float16")
        i = keras.Input(shape=(), name="i", dtype="int64")
        u = keras.Input(shape=(), name="u", dtype="uint8")
        outputs = {
            "nb": keras.ops.logical_not(b),
            "h2": keras.ops.multiply(h, 2),
            "i2": keras.ops.add(i, 1),
            "u2": keras.ops.add(u, 1),
        }
        model = keras.Model([b, h, i, u], outputs)
    input_spec, output_spec = problem_specs(problem)
    return create_keras_neuropod(
        neuropod_path=path,
        model_name=f"keras_{problem}",
        model=model,
        input_spec=input_spec,
        output_spec=output_spec,
        platform_version_semver=row.version,
        requirements=list(row.requirements),
    )


PACKAGERS: Dict[str, Callable[[Row, str, Path], Path]] = {
    "torch": _package_torch,
    "tensorflow": _package_tensorflow,
    "tf_graph_def": _package_tf_graph_def,
    "onnx": _package_onnx,
    "jax": _package_jax,
    "keras": _package_keras,
}


def package_row(row: Row, folder: Path) -> Dict[str, Any]:
    """Package every case of ``row`` under ``folder``: ``{case: path}``, or ``{case: "error: ..."}``."""
    packaged: Dict[str, Any] = {}
    for problem in CASES:
        if problem in INEXPRESSIBLE.get(row.framework, {}):
            continue
        try:
            packaged[problem] = PACKAGERS[row.kind](row, problem, folder / problem)
        except Exception as exc:  # a packaging failure is a result, not the end of the run
            packaged[problem] = f"packaging failed: {first_line(exc)}"
    return packaged


# -- running -------------------------------------------------------------------------------------


@dataclass
class RowResult:
    """What one row gave: per case ``pass``, ``fail: <first line>`` or ``n/a: <why>``."""

    framework: str
    version: str
    legacy: bool
    python: str = ""
    environment: str = ""
    chosen_by: str = ""  # "selection" (load_neuropod chose the environment) or "environment=" (this process has it)
    cases: Dict[str, str] = field(default_factory=dict)
    build_error: str = ""  # the environment could not be built: the first line of why
    seconds: float = 0.0
    when: str = ""


def first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300]


def check_case(model: Any, problem: str, size: int, seed: int = 0) -> Optional[str]:
    """None when ``model`` matches the numpy reference of ``problem`` on a batch of ``size``, else what differs."""
    from neuropod.selftest import compare_outputs

    inputs = PROBLEMS[problem].make_inputs(size, np.random.default_rng(seed))
    expected = PROBLEMS[problem].reference(inputs)
    actual = model.infer(inputs)
    problems = compare_outputs(expected, actual)
    for name, want in expected.items():
        got = actual.get(name)
        if got is not None and (np.asarray(got).dtype.kind, np.asarray(want).dtype.kind) != ("U", "U"):
            if np.asarray(got).dtype != np.asarray(want).dtype:
                problems.append(f"output {name!r}: dtype {np.asarray(got).dtype}, expected {np.asarray(want).dtype}")
    return "; ".join(problems) or None


def run_row(row: Row, packaged: Dict[str, Any], log: Callable[[str], None]) -> RowResult:
    """Load and check every packaged case of ``row`` (its environment already built)."""
    from neuropod import load_neuropod
    from neuropod.envs.need import need_of
    from neuropod.envs.select import ensure_environment, select_environment
    from neuropod.package import open_package

    result = RowResult(row.framework, row.version, row.legacy, when=time.strftime("%Y-%m-%d"))
    started = time.monotonic()
    for problem in CASES:
        why = INEXPRESSIBLE.get(row.framework, {}).get(problem)
        if why:
            result.cases[problem] = f"n/a: {why}"
            continue
        path = packaged[problem]
        if isinstance(path, str):
            result.cases[problem] = f"fail: {path}"
            continue
        try:
            package = open_package(path)
            chosen = select_environment(package)
            if chosen is None:  # this process has the version: run it in a built environment all the same
                environment = ensure_environment(need_of(package))
                result.chosen_by, options = "environment=", {"environment": environment.path}
            else:
                environment_path = str(Path(chosen).parent.parent)
                result.chosen_by, options = "selection", {}
            # The worker's Python, known before it loads (a model that fails to load still says where it ran).
            result.python = _python_version(environment.python if chosen is None else chosen)
            with load_neuropod(path, **options) as model:
                python = getattr(model.executor, "options", None)
                executable = getattr(python, "python_executable", None)
                if not executable:
                    raise AssertionError("the model ran in this process, not in a worker")
                result.environment = Path(executable).parent.parent.name
                result.python = _python_version(executable)
                if chosen is not None:
                    assert os.path.samefile(environment_path, Path(executable).parent.parent), executable
                failures = [f"batch 4: {d}" for d in [check_case(model, problem, 4)] if d]
                empty = check_case(model, problem, 0)
        except Exception as exc:
            result.cases[problem] = f"fail: {first_line(exc)}"
            log(f"    {problem}: FAIL {first_line(exc)}")
            if os.environ.get("NEUROPOD_MATRIX_TRACEBACKS"):
                traceback.print_exc()
            continue
        result.cases[problem] = f"fail: {failures[0]}" if failures else "pass"
        if empty:
            result.cases[f"{problem} ({EMPTY})"] = f"fail: {empty}"
        outcome = f"FAIL {failures[0]}" if failures else "pass"
        log(f"    {problem}: {outcome}" + (f" (empty batch: {empty})" if empty else ""))
    result.seconds = round(time.monotonic() - started, 1)
    return result


_PYTHONS: Dict[str, str] = {}


def _python_version(executable: str) -> str:
    if executable not in _PYTHONS:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            check=True,
        )
        _PYTHONS[executable] = done.stdout.strip()
    return _PYTHONS[executable]


def build_environment(row: Row, packaged: Dict[str, Any], log: Callable[[str], None]) -> Optional[str]:
    """Find or build the environment ``row``'s packages need (None: fine), else the first line of why not."""
    from neuropod.envs.build import Builder
    from neuropod.envs.need import need_of
    from neuropod.envs.select import find_environment
    from neuropod.package import open_package

    path = next((p for p in packaged.values() if not isinstance(p, str)), None)
    if path is None:
        return None
    need = need_of(open_package(path))
    if find_environment(need) is not None:
        log(f"  {row.label}: environment found")
        return None
    started = time.monotonic()
    log(f"  {row.label}: building ({need.describe()}) ...")
    try:
        builder = Builder()
        builder.build(builder.plan(need), _LogProgress(row.label, log))
    except Exception as exc:
        log(f"  {row.label}: build FAILED: {first_line(exc)}")
        return first_line(exc)
    log(f"  {row.label}: built in {time.monotonic() - started:.0f} s")
    return None


class _LogProgress:
    """Build progress as one line per step (two builds run at once: no live display)."""

    def __init__(self, label: str, log: Callable[[str], None]) -> None:
        self.label, self.log = label, log

    def step(self, name: str, detail: str = "") -> None:
        self.log(f"  {self.label}: {name}{' ' + detail[:100] if detail else ''}")

    def download(self, name: str, total_bytes: int) -> None:
        self.log(f"  {self.label}: downloading {name} ({total_bytes / 2**20:.0f} MiB)")

    def downloaded(self, name: str) -> None:
        pass

    def close(self, outcome: str) -> None:
        pass


# -- the document --------------------------------------------------------------------------------

#: Failures measured and explained: ``(framework, version, case) -> cause``. The CI slice checks
#: that each one listed for its rows still fails (and that nothing else does).
KNOWN_FAILURES: Dict[Tuple[str, str, str], str] = {
    ("torch", "1.4.0", "dtypes"): "torch 1.4 has no float16 multiplication on the CPU (`mul_cpu` for Half)",
    (
        "onnxruntime",
        "1.16.3",
        "strings",
    ): "StringConcat is an opset 20 operator; onnxruntime 1.16 reads opsets up to 19",
    (
        "onnxruntime",
        "1.16.3",
        "mixed",
    ): "on the empty batch, onnxruntime 1.16's ReduceSum (keepdims) gives shape [0], not [1]",
    **{
        ("onnxruntime", version, "dtypes"): "this onnxruntime has no uint8 kernel for Add"
        for version in ("1.16.3", "1.19.2")
    },
    **{
        ("jax", "0.4.30", case): "the program was exported here by jax 0.10.2 (serialisation version 3); jax 0.4.30 "
        "reads older versions only: `jax.export` artifacts run on the jax that wrote them and newer ones"
        for case in ("addition", "dtypes")
    },
    **{
        ("jax", version, case): "the program was exported here by jax 0.10.2 for any number of devices "
        "(`nr_devices=0`), which this older jax refuses: package with the jax the model will run on"
        for version in ("0.4.38", "0.5.3", "0.7.2")
        for case in ("addition", "dtypes")
    },
    **{
        ("keras", version, "dtypes"): "Keras on JAX computes int64 as int32 unless JAX's 64-bit mode is on "
        "(`JAX_ENABLE_X64=1`); the keras backend does not turn it on"
        for version in ("3.0.5", "3.3.3", "3.6.0", "3.10.0", "3.15.1")
    },
}


def known_failure(row: Row, case: str) -> str:
    """The cause of a known failure of ``case`` in ``row`` ("" when it must pass)."""
    return KNOWN_FAILURES.get((row.framework, row.version, case), "")


def _cell(text: str) -> str:
    if text == "pass":
        return "pass"
    if text.startswith("n/a"):
        return "n/a"
    return "**fail**"


def write_doc(results: List[Dict[str, Any]], path: Path, command: str) -> None:
    order = {(row.framework, row.version): index for index, row in enumerate(ROWS)}
    results = sorted(results, key=lambda r: order.get((r["framework"], r["version"]), 10**6))
    columns = [*CASES, EMPTY]
    lines = [
        "# Compatibility: framework versions tested",
        "",
        "<!-- Written by scripts/matrix.py (`bash scripts/dev.sh matrix`); edit the script, not this table. -->",
        "",
        "Each row is one framework version a package asked for. The conformance problems",
        "(`tests/conformance/problems.py`) were packaged here, pinned to that version, and loaded with",
        "`load_neuropod(path)`: version selection found or built an environment holding that version,",
        "and the model ran in an out-of-process worker there. *Python* is the worker's interpreter (the",
        "newest this machine has that the version has wheels for). Cases: `addition` (symbols: `batch`",
        "shared by both inputs and the output), `strings` (non-ASCII and empty strings), `mixed` (two",
        "outputs, float and string), `dtypes` (bool, float16, int64, uint8), and every case again with",
        "an empty batch. `n/a`: the framework cannot express the problem (no string tensors).",
        "",
        f"Last run: {max((r['when'] for r in results), default='-')} on {_machine()}, with `{command}`.",
        "",
        "| framework | version | Python | " + " | ".join(columns) + " | note |",
        "|---|---|---|" + "---|" * len(columns) + "---|",
    ]
    failures = []
    for result in results:
        cases = result["cases"]
        cells = [_cell(cases.get(problem, "n/a")) for problem in CASES]
        empty = [f"{k}: {v}" for k, v in cases.items() if EMPTY in k]
        ran = [v for p, v in cases.items() if p in CASES and v == "pass"]
        cells.append("**fail**" if empty else ("pass" if ran else "-"))
        row = next((r for r in ROWS if (r.framework, r.version) == (result["framework"], result["version"])), None)
        note = row.note if row else ""
        if result.get("chosen_by") == "environment=":
            note = (note + "; " if note else "") + "this process's version: run with `environment=` a built one"
        if result.get("build_error"):
            cells = ["**fail**"] * len(columns)
        version = result["version"] + (" (legacy)" if result.get("legacy") else "")
        python = result.get("python") or "-"
        lines.append(f"| {result['framework']} | {version} | {python} | " + " | ".join(cells) + f" | {note} |")
        if result.get("build_error"):
            failures.append((result, "environment", result["build_error"]))
        for problem, text in cases.items():
            if text.startswith("fail"):
                failures.append((result, problem, text[len("fail: ") :]))
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None.")
    for result, problem, text in failures:
        cause = KNOWN_FAILURES.get((result["framework"], result["version"], problem), "")
        lines.append(f"- **{result['framework']} {result['version']}**, {problem}: `{text}`")
        if cause:
            lines.append(f"  Cause: {cause}")
    lines += ["", "## How to run it", "", "```bash", "bash scripts/dev.sh matrix            # everything"]
    lines += [
        "bash scripts/dev.sh matrix torch onnx # some frameworks (the other rows are kept)",
        "```",
        "",
        "Environments are cached in `$NEUROPOD_ENVS_DIR` (the checkout's `.cache/envs` under dev.sh)",
        "and reused; results accumulate in `.cache/matrix/results.json`. The CI runs the slice in",
        "`tests/envs/test_matrix_slice.py`: the oldest and newest row of each framework and the legacy rows.",
        "",
    ]
    path.write_text("\n".join(lines))


def _machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform_module.processor() or "unknown CPU"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform_module.system()} {platform_module.machine()}, {os.cpu_count()} CPUs ({model}), {memory:.0f} GiB"


# -- the command ---------------------------------------------------------------------------------


def run(rows: Sequence[Row], work: Path, jobs: int = 2, log: Callable[[str], None] = print) -> List[RowResult]:
    """Package, build (``jobs`` at a time) and run ``rows``; the results in row order."""
    os.environ.setdefault("KERAS_BACKEND", KERAS_BACKEND)
    log(f"packaging {len(rows)} rows into {work}")
    packaged: Dict[Row, Dict[str, Any]] = {}
    for row in rows:
        folder = work / f"{row.framework}-{row.version}"
        shutil.rmtree(folder, ignore_errors=True)
        packaged[row] = package_row(row, folder)
    log(f"environments (at most {jobs} built at once):")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        build_errors = dict(zip(rows, pool.map(lambda r: build_environment(r, packaged[r], log), rows)))
    results = []
    for index, row in enumerate(rows, 1):
        log(f"[{index}/{len(rows)}] {row.label}")
        if build_errors[row]:
            results.append(
                RowResult(
                    row.framework,
                    row.version,
                    row.legacy,
                    build_error=build_errors[row] or "",
                    when=time.strftime("%Y-%m-%d"),
                )
            )
            continue
        results.append(run_row(row, packaged[row], log))
    return results


def _merge(store: Path, results: List[RowResult]) -> List[Dict[str, Any]]:
    try:
        kept = json.loads(store.read_text())
    except (OSError, ValueError):
        kept = []
    fresh = [asdict(r) for r in results]
    done = {(r["framework"], r["version"]) for r in fresh}
    merged = [r for r in kept if (r["framework"], r["version"]) not in done] + fresh
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(merged, indent=1))
    return merged


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("frameworks", nargs="*", help="only these (torch, tensorflow, onnxruntime, jax, keras)")
    parser.add_argument("--oldest-newest", action="store_true", help="the CI slice only")
    parser.add_argument("--list", action="store_true", help="print the rows and stop")
    parser.add_argument("--jobs", type=int, default=2, help="environments built at once (default 2)")
    parser.add_argument("--doc", default=str(REPO / "docs" / "compatibility.md"))
    parser.add_argument("--work", default=str(REPO / ".cache" / "matrix"))
    parser.add_argument(
        "--find-links",
        default=os.environ.get("PIP_FIND_LINKS", ""),
        help="a folder of local wheels uv may also install from (default: pip's PIP_FIND_LINKS; "
        "torch 2.13.0+cpu comes from there)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter, here and in every worker
    rows = slice_rows() if args.oldest_newest else list(ROWS)
    aliases = {"onnx": "onnxruntime", "tf": "tensorflow", "pytorch": "torch"}
    wanted = {aliases.get(f, f) for f in args.frameworks}
    unknown = wanted - {row.framework for row in ROWS}
    if unknown:
        parser.error(f"unknown framework(s) {sorted(unknown)}; choose from {sorted({r.framework for r in ROWS})}")
    rows = [row for row in rows if not wanted or row.framework in wanted]
    if args.list:
        for row in rows:
            print(f"{row.label:24} {' '.join(row.requirements):36} {'legacy ' if row.legacy else ''}{row.note}")
        return 0
    if args.find_links:
        os.environ["UV_FIND_LINKS"] = args.find_links
    work = Path(args.work)
    began = time.monotonic()
    results = run(rows, work / "packages", args.jobs)
    command = "bash scripts/dev.sh matrix" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    merged = _merge(work / "results.json", results)
    write_doc(merged, Path(args.doc), command)
    failed = [r for r in results if r.build_error or any(v.startswith("fail") for v in r.cases.values())]
    print(f"{len(results)} rows in {time.monotonic() - began:.0f} s; {len(failed)} with failures; wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
