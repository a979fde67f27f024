"""Every public name of the original's Python API exists at its import path with its parameters (issue 28 item 5).

The original's API is recorded as data in ``original_api.py``. Behaviour of
the names added for it is checked below the listing tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from original_api import (
    COMMON_PACKAGER_KEYWORDS,
    ORIGINAL_API,
    ORIGINAL_LOAD_KEYWORDS,
    ORIGINAL_PACKAGERS,
)

from neuropod import (
    BackendNotFoundError,
    InputValidationError,
    PackageError,
    SpecError,
    TestMismatchError,
    load_neuropod,
)
from neuropod.packagers import create_placeholder_neuropod

SPEC = dict(
    input_spec=[{"name": "x", "dtype": "float32", "shape": ("batch",)}],
    output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch",)}],
)


def _parameters(text: str):
    """(positional names in order, names with defaults, has **kwargs) of a recorded parameter list."""
    positional, named, var_keyword = [], [], False
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.startswith("**"):
            var_keyword = True
        elif item.endswith("="):
            named.append(item[:-1])
        else:
            positional.append(item)
    return positional, named, var_keyword


_NAMES = [(module, name, params) for module, names in ORIGINAL_API.items() for name, params in names.items()]


@pytest.mark.parametrize(("module", "name", "params"), _NAMES, ids=[f"{m}.{n}" for m, n, _ in _NAMES])
def test_the_originals_public_name_exists_with_its_parameters(module, name, params):
    value = getattr(importlib.import_module(module), name, None)
    assert value is not None, f"{module}.{name} is missing"
    if params is None:
        assert not callable(value), f"{module}.{name} is a constant in the original"
        return
    ours = inspect.signature(value).parameters
    positional, named, var_keyword = _parameters(params)
    leading = [p.name for p in ours.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert leading[: len(positional)] == positional, f"{module}.{name}{inspect.signature(value)}"
    if name == "load_neuropod":  # its keywords arrive through **options: test_the_originals_load_keywords_...
        named = []
    for parameter in named:
        assert parameter in ours, f"{module}.{name} lacks the keyword {parameter!r}"
    required = [
        p.name for p in ours.values() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    assert set(required) <= set(positional), f"{module}.{name} requires more than the original did: {required}"
    if var_keyword and name != "load_neuropod":  # load_neuropod refuses unknown keywords, on purpose
        assert any(p.kind == p.VAR_KEYWORD for p in ours.values()), f"{module}.{name} must take **kwargs"


_PACKAGERS = [(module, name, own) for name, (modules, own) in ORIGINAL_PACKAGERS.items() for module in modules]


@pytest.mark.parametrize(("module", "name", "own"), _PACKAGERS, ids=[f"{m}.{n}" for m, n, _ in _PACKAGERS])
def test_the_originals_packagers_take_its_keywords(module, name, own):
    ours = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    missing = [keyword for keyword in COMMON_PACKAGER_KEYWORDS + own if keyword not in ours]
    assert missing == []


@pytest.mark.parametrize(
    "keyword, value",
    [(k, v) for k in ORIGINAL_LOAD_KEYWORDS for v in {"visible_gpu": [None], "use_ope": [False]}.get(k, [True, False])],
)
def test_the_originals_load_keywords_are_accepted(tmp_path, keyword, value):
    path = create_placeholder_neuropod(tmp_path / "p", "p", **SPEC, package_as_zip=False)
    with load_neuropod(path, **{keyword: value}) as model:
        assert model.infer({"x": np.ones(2, np.float32)})["out"].shape == (2,)


# --- the names added for the original, by behaviour --------------------------------------------


def test_check_output_matches_expected_raises_value_error_naming_the_output():
    from neuropod.utils.eval_utils import check_output_matches_expected

    check_output_matches_expected({"out": np.array([1.0, 2.0]), "s": np.array(["a"])}, {"out": np.array([1.0, 2.0])})
    with pytest.raises(ValueError, match="'out'") as raised:
        check_output_matches_expected({"out": np.array([1.0, 2.5])}, {"out": np.array([1.0, 2.0])})
    assert isinstance(raised.value, TestMismatchError)
    with pytest.raises(ValueError, match="'s'"):
        check_output_matches_expected({"s": np.array(["a"])}, {"s": np.array(["b"])})


def test_print_output_summary_logs_shapes_and_refuses_non_arrays(caplog):
    from neuropod.utils.eval_utils import print_output_summary

    caplog.set_level(logging.INFO, logger="neuropod.utils.eval_utils")
    print_output_summary({"out": np.zeros((2, 3), np.float32)})
    assert any("shape (2, 3)" in r.getMessage() and "float32" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="Output `out`"):
        print_output_summary({"out": [1, 2]})


def test_test_data_filename_names_the_file_packagers_write(tmp_path):
    from neuropod.utils.eval_utils import TEST_DATA_FILENAME

    path = create_placeholder_neuropod(
        tmp_path / "p", "p", **SPEC, package_as_zip=False, test_input_data={"x": np.ones(2, np.float32)}
    )
    assert (path / TEST_DATA_FILENAME).is_file()


def test_validate_tensor_spec_checks_as_the_original():
    from neuropod.utils.config_utils import ALLOWED_DTYPES, validate_tensor_spec

    assert {"float32", "float64", "string", "int64", "uint8"} <= set(ALLOWED_DTYPES)
    validate_tensor_spec([{"name": "x", "dtype": "float32", "shape": (None, "batch", 3)}])
    for bad, words in [
        ({"name": "x", "dtype": "double", "shape": ()}, "'double'"),
        ({"name": 1, "dtype": "float32", "shape": ()}, "'name'"),
        ({"name": "x", "dtype": "float32", "shape": 3}, "shape"),
        ({"name": "x", "dtype": "float32", "shape": (0,)}, "positive int, got 0"),
        ({"name": "x", "dtype": "float32", "shape": (True,)}, "got True"),
    ]:
        with pytest.raises(SpecError, match=words):
            validate_tensor_spec([bad])


def test_validate_tensors_against_specs_checks_as_the_original():
    from neuropod.backends.neuropod_executor import validate_tensors_against_specs

    specs = [
        {"name": "x", "dtype": "float32", "shape": ("n", 2)},
        {"name": "y", "dtype": "string", "shape": (None, "n")},
    ]
    x = np.zeros((3, 2), np.float32)
    validate_tensors_against_specs({"x": x, "y": np.array([["a", "b", "c"]])}, specs)
    validate_tensors_against_specs({}, specs)  # every tensor is optional, as in the original
    for tensors, words in [
        ({"bogus": x}, "'bogus' is not in the spec"),
        ({"x": x.astype(np.int32)}, "'x': expected dtype float32, got int32"),
        ({"x": x[0]}, "'x': expected rank 2"),
        ({"x": np.zeros((3, 1), np.float32)}, "expected size 2 in dimension 1"),
        ({"x": x, "y": np.array([["a", "b"]])}, "symbol 'n' in dimension 1 is 2"),
    ]:
        with pytest.raises(InputValidationError, match=words):
            validate_tensors_against_specs(tensors, specs)
    with pytest.raises(SpecError, match="True"):
        validate_tensors_against_specs({"x": x}, [{"name": "x", "dtype": "float32", "shape": (True, 2)}])


def test_compile_requirements_writes_pinned_lines_and_refuses_ranges(tmp_path):
    from neuropod.utils.pip_utils import compile_requirements

    (tmp_path / "req.txt").write_text("# deps\nsix==1.17.0\nNumpy==1.26.4\n")
    compile_requirements(tmp_path / "req.txt", tmp_path / "req.lock")
    assert (tmp_path / "req.lock").read_text() == "Numpy==1.26.4\nsix==1.17.0\n"
    (tmp_path / "range.txt").write_text("numpy>=1.0\n")
    with pytest.raises(PackageError, match="not pinned"):
        compile_requirements(tmp_path / "range.txt", tmp_path / "range.lock")


def test_register_backend_names_what_replaces_it():
    from neuropod.registry import register_backend

    with pytest.raises(BackendNotFoundError, match="'neuropod.backends' entry-point group"):
        register_backend("torchscript", "1.4.0", "/usr/lib/libneuropod_torchscript_backend.so")


def test_load_installed_backends_is_harmless():
    from neuropod.loader import load_installed_backends

    assert load_installed_backends() is None


def test_dtype_utils_and_hash_utils():
    import hashlib

    from neuropod.utils.dtype_utils import get_dtype, get_dtype_name, maybe_convert_bindings_types
    from neuropod.utils.hash_utils import sha256sum

    assert get_dtype("float32") == np.float32 and get_dtype("string").kind == "U"
    assert get_dtype_name("double") == "float64" and get_dtype_name(np.dtype("<U3")) == "string"
    items = {"s": np.array(["a"])}
    assert maybe_convert_bindings_types(items)["s"] is items["s"]
    assert sha256sum(__file__) == hashlib.sha256(open(__file__, "rb").read()).hexdigest()


def test_zip_loader_gives_a_verified_directory(tmp_path):
    from neuropod.utils.zip_loader import extract_neuropod_if_necessary

    directory = create_placeholder_neuropod(tmp_path / "d", "d", **SPEC, package_as_zip=False)
    assert extract_neuropod_if_necessary(directory) == str(directory)
    zipped = create_placeholder_neuropod(tmp_path / "z.zip", "z", **SPEC)
    extracted = extract_neuropod_if_necessary(zipped)
    assert json.loads(open(os.path.join(extracted, "config.json")).read())["name"] == "z"


def test_packager_decorator_runs_a_packager_written_for_the_original(tmp_path):
    from neuropod.utils.packaging_utils import packager

    @packager(platform="python")
    def create_echo_neuropod(neuropod_path, model_name, **kwargs):
        """Echo.

        {common_doc_pre}
        {common_doc_post}
        """
        # What the original's own packagers did: create 0/data and write 0/config.json.
        os.makedirs(os.path.join(neuropod_path, "0", "data"))
        os.makedirs(os.path.join(neuropod_path, "0", "code"))
        with open(os.path.join(neuropod_path, "0", "code", "echo_model.py"), "w") as f:
            f.write("def get_model(_):\n    return lambda x: {'out': x * 2}\n")
        with open(os.path.join(neuropod_path, "0", "config.json"), "w") as f:
            json.dump({"entrypoint_package": "echo_model", "entrypoint": "get_model"}, f)

    assert "{common_doc_pre}" not in create_echo_neuropod.__doc__
    x = np.arange(3, dtype=np.float32)
    path = create_echo_neuropod(
        neuropod_path=str(tmp_path / "echo"),
        model_name="echo",
        **SPEC,
        package_as_zip=False,
        test_input_data={"x": x},
        test_expected_out={"out": x * 2},
    )
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(model.infer({"x": x})["out"], x * 2)
    with pytest.raises(TestMismatchError):
        create_echo_neuropod(
            neuropod_path=str(tmp_path / "echo2"),
            model_name="echo",
            **SPEC,
            test_input_data={"x": x},
            test_expected_out={"out": x},
        )


def test_eval_in_new_process_and_run_native_tests_false(tmp_path):
    from neuropod.utils.env_utils import eval_in_new_process

    path = create_placeholder_neuropod(tmp_path / "p", "p", **SPEC, package_as_zip=False)
    x = {"x": np.ones(4, np.float32)}
    out = eval_in_new_process(str(path), x, neuropod_load_args={"_always_use_native": False})
    with load_neuropod(path) as model:
        np.testing.assert_array_equal(out["out"], model.infer(x)["out"])
    # NEUROPOD_RUN_NATIVE_TESTS=false: load_and_test_neuropod runs the package in a new process.
    script = (
        "import numpy as np, sys\n"
        "from neuropod.utils import eval_utils\n"
        "assert eval_utils.RUN_NATIVE_TESTS is False\n"
        "out = eval_utils.load_and_test_neuropod(sys.argv[1], {'x': np.ones(4, np.float32)}, None)\n"
        "print(sorted(out))\n"
    )
    env = {**os.environ, "NEUROPOD_RUN_NATIVE_TESTS": "false"}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['out']"
