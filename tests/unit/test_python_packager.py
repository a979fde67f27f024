import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS, require
from neuropod import InferenceError, PackageError, load_neuropod
from neuropod.errors import RequirementsError
from neuropod.packagers import create_python_neuropod, create_pytorch_neuropod

X = np.arange(6, dtype=np.float32).reshape(2, 3)
Y = np.ones((2, 3), np.float32)


def _write_code(root: Path, package: str, body: str) -> Path:
    pkg = root / package
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(textwrap.dedent(body))
    return root


ADDER = """
    import os
    import numpy as np

    def get_model(data_root):
        scale = float(open(os.path.join(data_root, "scale.txt")).read())
        def model(x, y):
            return {"out": (x + y) * scale}
        return model
"""


def _python_package(tmp_path, name, code_root, package="adder", data=None, **kwargs):
    data_paths = []
    if data is not None:
        data_file = tmp_path / f"{name}-scale.txt"
        data_file.write_text(str(data))
        data_paths = [{"path": str(data_file), "packaged_name": "scale.txt"}]
    return create_python_neuropod(
        neuropod_path=tmp_path / name,
        model_name=name,
        data_paths=data_paths,
        code_path_spec=[{"python_root": str(code_root), "dirs_to_package": [package]}],
        entrypoint_package=f"{package}.main",
        entrypoint="get_model",
        input_spec=ADDITION_INPUTS,
        output_spec=ADDITION_OUTPUTS,
        **kwargs,
    )


def test_python_package_with_data_and_self_test(tmp_path):
    code = _write_code(tmp_path / "src", "adder", ADDER)
    path = _python_package(
        tmp_path, "m", code, data=2, test_input_data={"x": X, "y": Y}, test_expected_out={"out": (X + Y) * 2}
    )
    with load_neuropod(path) as model:
        assert model.platform == "python"
        np.testing.assert_array_equal(model.infer({"x": X, "y": Y})["out"], (X + Y) * 2)


def test_two_packages_with_the_same_module_names_do_not_collide(tmp_path):
    code_a = _write_code(tmp_path / "a", "adder", ADDER)
    code_b = _write_code(tmp_path / "b", "adder", ADDER.replace("(x + y) * scale", "(x - y) * scale"))
    with (
        load_neuropod(_python_package(tmp_path, "plus", code_a, data=1)) as plus,
        load_neuropod(_python_package(tmp_path, "minus", code_b, data=1)) as minus,
    ):
        np.testing.assert_array_equal(plus.infer({"x": X, "y": Y})["out"], X + Y)
        np.testing.assert_array_equal(minus.infer({"x": X, "y": Y})["out"], X - Y)
    assert "adder" not in sys.modules  # the packages' modules do not leak into the caller


def test_requirements_are_stored_and_checked(tmp_path):
    code = _write_code(tmp_path / "src", "adder", ADDER)
    import numpy

    ok = _python_package(tmp_path, "ok", code, data=1, requirements=f"numpy=={numpy.__version__}\n# comment\n")
    with load_neuropod(ok) as model:
        assert model.package.requirements() == [f"numpy=={numpy.__version__}"]
    bad = _python_package(tmp_path, "bad", code, data=1, requirements=["numpy==0.0.1", "surely-not-installed-pkg==1.0"])
    with pytest.raises(RequirementsError) as info:
        # "current": check this process (by default an environment with the pins would be built; tests/envs)
        load_neuropod(bad, environment="current")
    assert f"numpy==0.0.1 (found {numpy.__version__})" in str(info.value)
    assert "surely-not-installed-pkg==1.0 (not installed)" in str(info.value)


def test_unpinned_requirements_are_refused(tmp_path):
    code = _write_code(tmp_path / "src", "adder", ADDER)
    with pytest.raises(PackageError, match="'numpy>=1.0' is not pinned"):
        _python_package(tmp_path, "m", code, data=1, requirements="numpy>=1.0")


def test_model_exception_and_bad_return_type(tmp_path):
    code = _write_code(
        tmp_path / "src",
        "boom",
        """
        def get_model(data_root):
            def model(x, y):
                if x.sum() > 100:
                    raise KeyError("too big")
                return [x]
            return model
    """,
    )
    path = _python_package(tmp_path, "m", code, package="boom")
    with load_neuropod(path) as model:
        with pytest.raises(InferenceError, match="KeyError: 'too big'"):
            model.infer({"x": X + 100, "y": Y})
        with pytest.raises(InferenceError, match="returned list, expected a dict of arrays"):
            model.infer({"x": X, "y": Y})


def test_missing_entrypoint_is_a_package_error(tmp_path):
    code = _write_code(tmp_path / "src", "adder", ADDER)
    with pytest.raises(PackageError, match="entrypoint 'nope' not found"):
        create_python_neuropod(
            neuropod_path=tmp_path / "m",
            model_name="m",
            data_paths=[],
            code_path_spec=[{"python_root": str(code), "dirs_to_package": ["adder"]}],
            entrypoint_package="adder.main",
            entrypoint="nope",
            input_spec=ADDITION_INPUTS,
            output_spec=ADDITION_OUTPUTS,
            test_input_data={"x": X, "y": Y},
        )


def test_code_that_fails_while_it_is_imported_is_named_as_such_not_as_a_missing_entrypoint(tmp_path):
    """An AttributeError inside the package's import (numpy 1.24 removed np.float, which old code used) is the
    cause to show, not 'entrypoint not found' (the original's test_python_deps met exactly this)."""
    code = _write_code(tmp_path / "src", "adder", "import numpy as np\nnp.no_such_alias\n\ndef get_model(d): pass\n")
    path = _python_package(tmp_path, "m", code)
    with pytest.raises(PackageError, match="failed while it was imported .*AttributeError: .*no_such_alias"):
        load_neuropod(path)


def test_pytorch_packager_returns_numpy_from_torch_tensors(tmp_path):
    require("torch")
    code = _write_code(
        tmp_path / "src",
        "torchy",
        """
        import torch

        def get_model(data_root):
            linear = torch.nn.Identity()
            def model(x, y):
                return {"out": linear(torch.from_numpy(x) + torch.from_numpy(y)), "label": ["a", "b"]}
            return model
    """,
    )
    outputs = ADDITION_OUTPUTS + [{"name": "label", "dtype": "string", "shape": ["batch"]}]
    path = create_pytorch_neuropod(
        neuropod_path=tmp_path / "m",
        model_name="m",
        data_paths=[],
        code_path_spec=[{"python_root": str(code), "dirs_to_package": ["torchy"]}],
        entrypoint_package="torchy.main",
        entrypoint="get_model",
        input_spec=ADDITION_INPUTS,
        output_spec=outputs,
        test_input_data={"x": X, "y": Y},
        test_expected_out={"out": X + Y, "label": np.array(["a", "b"])},
    )
    with load_neuropod(path) as model:
        assert model.platform == "python"
        out = model.infer({"x": X, "y": Y})
        assert isinstance(out["out"], np.ndarray) and out["label"].dtype.kind == "U"


def test_loading_leaves_the_package_unchanged_even_where_python_writes_bytecode(tmp_path):
    code = _write_code(tmp_path / "src", "adder", ADDER)
    path = _python_package(tmp_path, "m", code, data=1, package_as_zip=False)
    script = (
        "import sys; from neuropod import load_neuropod\n"
        "for _ in range(2):\n"
        f"    load_neuropod({str(path)!r}).close()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    assert not list(Path(path).rglob("*.pyc"))


# --- issue 12 item 7: the shared packaging arguments (declared once: tests/unit/test_packager_arguments.py) ---


def test_a_mistyped_argument_names_the_function_the_user_called(tmp_path):
    from neuropod.packagers import create_placeholder_neuropod

    with pytest.raises(
        TypeError, match=r"create_placeholder_neuropod\(\) got an unexpected keyword argument 'test_inputs'"
    ):
        create_placeholder_neuropod(tmp_path / "p", "m", ADDITION_INPUTS, ADDITION_OUTPUTS, test_inputs={})
    with pytest.raises(ValueError, match=r"^create_placeholder_neuropod: seed"):
        create_placeholder_neuropod(tmp_path / "p", "m", ADDITION_INPUTS, ADDITION_OUTPUTS, seed=-1)
