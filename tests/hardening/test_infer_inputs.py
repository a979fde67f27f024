"""Issue 12 item 9 and issue 13 item 6: what users pass to ``infer``, and what hostile callers pass.

Framework tensors are viewed as numpy arrays without a copy or refused by
name; look-alike objects, non-string names and lone surrogates give an
InputValidationError (with validate=False too); a tensor of rank 40 or 64
never reaches (and so never kills) an OPE worker. The property tests run the
spec validator and ``infer`` over generated inputs: a result or a
NeuropodError, nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from property_helpers import cases, outcome  # noqa: E402

from conftest import require  # noqa: E402
from neuropod import load_neuropod  # noqa: E402
from neuropod.errors import InputValidationError, NeuropodError, SpecError  # noqa: E402
from neuropod.input_arrays import as_numpy_inputs  # noqa: E402
from neuropod.packagers import create_placeholder_neuropod  # noqa: E402
from neuropod.spec import DTYPES, SpecValidator, TensorSpec  # noqa: E402

INPUTS = [
    {"name": "x", "dtype": "float32", "shape": ["batch", 3]},
    {"name": "s", "dtype": "string", "shape": ["batch"]},
]
OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", 2]}]
X = np.ones((2, 3), np.float32)
S = np.array(["a", "b"])


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return create_placeholder_neuropod(tmp_path_factory.mktemp("p") / "m.zip", "m", INPUTS, OUTPUTS, seed=1)


@pytest.fixture(scope="module")
def model(package):
    with load_neuropod(package) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def unvalidated(package):
    with load_neuropod(package, validate=False) as loaded:
        yield loaded


# --- framework tensors ---------------------------------------------------------------------


def test_torch_tensors_are_viewed_without_a_copy(model):
    torch = require("torch")
    x = torch.ones(2, 3, requires_grad=True)
    viewed = as_numpy_inputs({"x": x})["x"]
    assert viewed.__array_interface__["data"][0] == x.data_ptr()  # the same memory
    bf16 = as_numpy_inputs({"x": torch.ones(2, dtype=torch.bfloat16)})["x"]
    assert bf16.dtype.name == "bfloat16"
    expected = model.infer({"x": X, "s": S})["out"]
    np.testing.assert_array_equal(model.infer({"x": torch.ones(2, 3), "s": S})["out"], expected)
    with pytest.raises(InputValidationError, match=r"input 'x': a torch.sparse_coo tensor is not a dense array"):
        model.infer({"x": torch.ones(2, 3).to_sparse(), "s": S})
    with pytest.raises(InputValidationError, match=r"input 'x': expected dtype float32, got float64"):
        model.infer({"x": torch.ones(2, 3, dtype=torch.float64), "s": S})


def test_jax_arrays_are_viewed_without_a_copy(model):
    jnp = require("jax.numpy")
    x = jnp.ones((2, 3), jnp.float32)
    viewed = as_numpy_inputs({"x": x})["x"]
    assert viewed.__array_interface__["data"][0] == x.unsafe_buffer_pointer()
    assert as_numpy_inputs({"x": jnp.ones(2, jnp.bfloat16)})["x"].dtype.name == "bfloat16"
    np.testing.assert_array_equal(model.infer({"x": x, "s": S})["out"], model.infer({"x": X, "s": S})["out"])


def test_tensorflow_tensors_convert_strings_included(model):
    tf = require("tensorflow")
    out = model.infer({"x": tf.ones((2, 3)), "s": tf.constant(["a", "b"])})["out"]
    np.testing.assert_array_equal(out, model.infer({"x": X, "s": S})["out"])
    with pytest.raises(InputValidationError, match="input 'x': expected dtype float32, got int32"):
        model.infer({"x": tf.ones((2, 3), tf.int32), "s": S})


class _LooksLikeAnArray:
    dtype = np.dtype("float32")
    shape = (2, 3)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ({"x": _LooksLikeAnArray(), "s": S}, "input 'x': expected a numpy array .* has dtype and shape but is not"),
        ({"x": [[1.0, 2.0, 3.0]], "s": S}, "input 'x': expected a numpy array .* got list"),
        ({1: X}, "inputs: a name must be a string, got int 1"),
        ({("x",): X}, "a name must be a string, got tuple"),
        ({"x\udc80": X}, "the name is not valid Unicode text"),
    ],
)
def test_hostile_inputs_are_input_validation_errors(package, validate, inputs, fragment):
    with load_neuropod(package, validate=validate) as loaded:
        with pytest.raises(InputValidationError, match=fragment):
            loaded.infer(inputs)


@pytest.mark.parametrize("rank", [33, 40, 64])
def test_a_rank_past_the_wire_limit_never_reaches_the_worker(package, rank):
    with load_neuropod(package, use_ope=True, validate=False, timeout=20) as loaded:
        (worker,) = loaded.executor.workers
        loaded.infer({"x": X, "s": S})
        pid = worker.pid
        with pytest.raises(InputValidationError, match=f"input 'x': rank {rank} exceeds the limit of 32"):
            loaded.infer({"x": np.ones((1,) * rank, np.float32), "s": S})
        with pytest.raises(InputValidationError, match="the name is not valid Unicode text"):
            loaded.infer({"x": X, "s\udc80": S})
        loaded.infer({"x": X, "s": S})
        assert worker.pid == pid  # the same worker: nothing killed it


# --- properties ------------------------------------------------------------------------------

_dims = st.one_of(
    st.none(), st.integers(-2, 5), st.sampled_from(["batch", "n", ""]), st.booleans(), st.floats(), st.text(max_size=2)
)
_spec_dicts = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=5), st.integers(), st.none()),
        "dtype": st.one_of(
            st.sampled_from(list(DTYPES) + ["double", "complex64", "object", "U", ""]),
            st.text(max_size=4),
            st.integers(),
            st.none(),
        ),
        "shape": st.one_of(st.lists(_dims, max_size=4), st.text(max_size=3), st.integers(), st.none()),
    }
)


@cases(2000)
@given(spec=_spec_dicts)
def test_spec_construction_gives_a_spec_or_a_spec_error(spec):
    result = outcome(lambda: TensorSpec.from_dict(spec))
    assert isinstance(result, (TensorSpec, SpecError)), result


_numeric = [d for d in DTYPES if d not in ("string", "bfloat16")]
_arrays = st.builds(
    lambda dtype, shape: np.zeros(shape, dtype) if dtype != "string" else np.full(shape, "ab"),
    st.sampled_from(_numeric + ["string"]),
    st.lists(st.integers(0, 4), max_size=4).map(tuple),
)
_values = st.one_of(
    _arrays,
    _arrays.map(lambda a: a.astype(a.dtype.newbyteorder()) if a.dtype.kind != "U" else a.astype("S")),
    _arrays.map(lambda a: a.astype(object)),
    st.builds(_LooksLikeAnArray),
    st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=3)),
    st.just(np.array([b"\xff\xfe"], dtype="S2")),  # bytes that are not UTF-8
)
_keys = st.one_of(st.sampled_from(["x", "s", "batch"]), st.text(max_size=3), st.integers(), st.just("x\udc80"))
_inputs = st.dictionaries(_keys, _values, max_size=3)
_validators = st.lists(
    st.builds(
        TensorSpec,
        st.sampled_from(["x", "s", "y"]),
        st.sampled_from(DTYPES),
        st.lists(st.one_of(st.none(), st.integers(1, 4), st.sampled_from(["batch", "n"])), max_size=3).map(tuple),
    ),
    max_size=3,
    unique_by=lambda spec: spec.name,
)


@cases(3000)
@given(specs=_validators, inputs=_inputs)
def test_the_validator_accepts_only_what_the_spec_says(specs, inputs):
    validator = SpecValidator(specs, "input")
    result = outcome(lambda: validator.validate(as_numpy_inputs(inputs)))
    if isinstance(result, NeuropodError):
        return
    by_name = {spec.name: spec for spec in specs}
    for name, array in inputs.items():  # what passed really matches its spec
        spec = by_name[name]
        assert array.ndim == len(spec.shape)
        assert all(array.shape[i] == d for i, d in enumerate(spec.shape) if isinstance(d, int))


@cases(2000)
@given(inputs=_inputs)
def test_infer_gives_outputs_or_a_neuropod_error(model, inputs):
    result = outcome(lambda: model.infer(inputs))
    assert isinstance(result, (dict, NeuropodError)), result


@cases(1000)
@given(names=st.lists(_keys, max_size=3))
def test_infer_without_validation_refuses_bad_names_cleanly(unvalidated, names):
    inputs = {"x": X, "s": S, **{name: X for name in names}}
    result = outcome(lambda: unvalidated.infer(inputs))
    assert isinstance(result, (dict, NeuropodError)), result
