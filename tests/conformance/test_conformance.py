"""One suite, every framework: the same problems give the same outputs and the same errors.

Builders come from every ``builders_*.py`` module in this folder (each holds
``BUILDERS = {platform: builder}``; ``builder.build(path, problem) -> path``).
A framework that cannot express a problem is listed in :data:`INEXPRESSIBLE`
with the reason, and those pairs are not run; a builder raising
``NotImplementedError`` for any other pair fails, so a new problem needs every
builder (or an entry here). Each package is built once per session; each
loaded model serves all its checks, then is closed.

``LOAD_OPTIONS`` says how packages are loaded: in this process, and in a
worker process too when the out-of-process executor is present.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

import numpy as np
import pytest
from problems import BIG_ELEMENTS, PROBLEMS, bad_inputs

from conftest import require
from neuropod import InferenceError, NeuropodError, load_neuropod
from neuropod.backends import BUILTIN_BACKENDS
from neuropod.loader import Neuropod
from neuropod.selftest import compare_outputs
from neuropod.spec import dtype_of_array

HERE = Path(__file__).resolve().parent

#: How each package is loaded: in this process, and in a worker process.
LOAD_OPTIONS: List[Dict[str, Any]] = [{}, {"use_ope": True}]

#: (platform, problem) pairs a framework cannot express, and why: these are not run.
INEXPRESSIBLE: Dict[Tuple[str, str], str] = {
    **{(p, q): "JAX has no string dtype" for p in ("jax",) for q in ("strings", "mixed")},
    **{(p, q): "torch has no string tensors" for p in ("pytorch", "torch_export") for q in ("strings", "mixed")},
    **{("keras", q): "keras.ops has no string ops" for q in ("strings", "mixed")},
}

#: Outputs computed by a reduction, whose summation order differs between frameworks.
REDUCTIONS = {("mixed", "total")}

#: (platform, problem) -> why an empty batch fails there: it must pass, or raise an InferenceError that names the
#: empty input and the framework's limit (docs/frameworks.md, "Empty batches"). Everything else must pass.
EMPTY_BATCH_GAPS = {
    ("keras", "addition"): "Keras' Add layer on TensorFlow fails on a (0, n) batch (BiasAdd: 'Biases must be 1D')",
}


def _collect_builders() -> Dict[str, Any]:
    builders: Dict[str, Any] = {}
    for path in sorted(HERE.glob("builders_*.py")):
        module = importlib.import_module(path.stem)
        for platform, builder in module.BUILDERS.items():
            if platform in builders:
                raise RuntimeError(f"{path.name}: platform {platform!r} already has a builder")
            builders[platform] = builder
    return builders


BUILDERS = _collect_builders()


def _options_id(options: Dict[str, Any]) -> str:
    return "ope" if options.get("use_ope") else "inprocess"


def _require_framework(platform: str) -> None:
    builder = BUILDERS[platform]
    info = BUILTIN_BACKENDS.get(platform)
    for module in getattr(builder, "requires", None) or (info.requires if info else ()):
        require(module)


class PackageStore:
    """Builds each (platform, problem) package once per session, remembering what could not be built."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: Dict[Tuple[str, str], Union[Path, BaseException]] = {}
        self._baselines: Dict[str, Neuropod] = {}

    def get(self, platform: str, problem: str) -> Path:
        _require_framework(platform)
        key = (platform, problem)
        if key not in self._built:
            try:
                self._built[key] = Path(BUILDERS[platform].build(self.root / f"{platform}-{problem}.zip", problem))
            except Exception as exc:  # remembered, so a broken build is reported once per test, not rebuilt
                self._built[key] = exc
        result = self._built[key]
        if isinstance(result, NotImplementedError):
            pytest.fail(
                f"the {platform} builder cannot build {problem!r} ({result}): build it, or list the pair in "
                "INEXPRESSIBLE with the reason"
            )
        if isinstance(result, BaseException):
            raise result
        return result

    def baseline(self, problem: str) -> Neuropod:
        """A placeholder model of ``problem`` loaded in this process: it needs no framework."""
        if problem not in self._baselines:
            self._baselines[problem] = load_neuropod(self.get("placeholder", problem))
        return self._baselines[problem]

    def close(self) -> None:
        for model in self._baselines.values():
            model.close()


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageStore]:
    packages = PackageStore(tmp_path_factory.mktemp("conformance"))
    yield packages
    packages.close()


@dataclass
class Case:
    platform: str
    problem: str
    model: Neuropod
    checks_values: bool


# Worker processes cost seconds each to start, so the worker variant skips "addition" (plain float
# tensors, which dtypes and identity_big also carry); the swap test still runs addition in workers.
CASES = [
    (p, q, i)
    for p in sorted(BUILDERS)
    for q in PROBLEMS
    for i in range(len(LOAD_OPTIONS))
    if not (LOAD_OPTIONS[i].get("use_ope") and q == "addition") and (p, q) not in INEXPRESSIBLE
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{p}-{q}-{_options_id(LOAD_OPTIONS[i])}" for p, q, i in CASES])
def case(request: pytest.FixtureRequest, store: PackageStore) -> Iterator[Case]:
    # Module scope: pytest runs every test of one case before loading the next, so one model is alive at a time.
    platform, problem, options_index = request.param
    path = store.get(platform, problem)
    model = load_neuropod(path, **LOAD_OPTIONS[options_index])
    try:
        yield Case(platform, problem, model, getattr(BUILDERS[platform], "checks_values", True))
    finally:
        model.close()


def _check(case: Case, inputs: Dict[str, np.ndarray]) -> None:
    expected = PROBLEMS[case.problem].reference(inputs)
    actual = case.model.infer(inputs)
    assert sorted(actual) == sorted(expected)
    for name, want in expected.items():
        got = actual[name]
        assert dtype_of_array(got) == dtype_of_array(want), f"output {name!r}"
        if not case.checks_values:
            continue  # the spec's shapes were checked by infer's own output validation
        if (case.problem, name) in REDUCTIONS:
            assert not compare_outputs({name: want}, {name: got})
        else:
            assert got.shape == want.shape, f"output {name!r}"
            assert np.array_equal(got, want), f"output {name!r}: expected {want!r}, got {got!r}"


def test_outputs_match_the_numpy_reference(case: Case) -> None:
    _check(case, PROBLEMS[case.problem].make_inputs(5, np.random.default_rng(1)))


def test_empty_and_64mb_tensors(case: Case) -> None:
    problem = PROBLEMS[case.problem]
    empty = problem.make_inputs(0, np.random.default_rng(2))
    if (case.platform, case.problem) in EMPTY_BATCH_GAPS:
        try:
            _check(case, empty)
        except InferenceError as exc:
            name, array = next((n, a) for n, a in empty.items() if 0 in a.shape)
            assert f"(input {name!r} is empty, shape {array.shape}: " in str(exc), str(exc)
            assert str(exc).count("\n") == 0, str(exc)
    else:
        _check(case, empty)
    if case.problem == "identity_big":
        big = {"x": np.random.default_rng(3).standard_normal(BIG_ELEMENTS, dtype=np.float32)}
        assert big["x"].nbytes == 64 * 1024 * 1024
        _check(case, big)


def test_bad_inputs_fail_with_the_same_error_everywhere(case: Case, store: PackageStore) -> None:
    baseline = store.baseline(case.problem)
    for kind, inputs in bad_inputs(case.problem, np.random.default_rng(4)).items():
        with pytest.raises(NeuropodError) as expected:
            baseline.infer(inputs)
        with pytest.raises(NeuropodError) as actual:
            case.model.infer(inputs)
        assert type(actual.value) is type(expected.value), kind
        assert str(actual.value) == str(expected.value), kind


def consumer(model: Neuropod) -> float:
    """Problem-specific code written once; it never learns which framework runs the model."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    return float(model.infer({"x": x, "y": x * 10})["out"].sum())


@pytest.mark.parametrize("options", LOAD_OPTIONS, ids=_options_id)
def test_models_of_every_framework_swap_behind_one_consumer(store: PackageStore, options: Dict[str, Any]) -> None:
    results = {}
    for platform, builder in sorted(BUILDERS.items()):
        if not getattr(builder, "checks_values", True):
            continue
        try:
            path = store.get(platform, "addition")
        except pytest.skip.Exception:
            continue  # framework not installed here (CI fails in require instead)
        with load_neuropod(path, **options) as model:
            results[platform] = consumer(model)
    assert len(results) >= 2, f"only {sorted(results)} could run the addition problem"
    assert set(results.values()) == {float((np.arange(12) * 11).sum())}, results


def test_a_builder_that_cannot_build_a_problem_fails_unless_listed(tmp_path: Path, monkeypatch: Any) -> None:
    class Unable:
        requires = ()

        def build(self, path: Path, problem: str) -> Path:
            raise NotImplementedError("not written yet")

    monkeypatch.setitem(BUILDERS, "unable", Unable())
    store = PackageStore(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="list the pair in INEXPRESSIBLE"):
        store.get("unable", "addition")
    assert all(BUILDERS[p] and q in PROBLEMS for p, q in INEXPRESSIBLE)  # no stale entries
