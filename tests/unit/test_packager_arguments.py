"""The keyword arguments every packager shares: declared once (packagers/_shared.py), shown everywhere.

Type checkers see them through ``**shared: Unpack[...]``; ``help()``,
``inspect.signature`` and the docstring see them through the ``@packager``
decorator; a keyword no packager takes is Python's own ``TypeError``.
"""

import ast
import importlib
import inspect
import pydoc
import re
from pathlib import Path

import numpy as np
import pytest

import neuropod.packagers as packagers
from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS
from neuropod.packagers import _shared
from neuropod.packagers._shared import SHARED

SRC = Path(packagers.__file__).resolve().parents[1]
PACKAGERS = sorted(packagers.__all__)


def _packager(name):
    return getattr(importlib.import_module(packagers._PACKAGERS[name]), name)


@pytest.mark.parametrize("name", PACKAGERS)
def test_every_packager_shows_each_shared_keyword_with_its_type_default_and_doc(name):
    function = _packager(name)
    parameters = inspect.signature(function).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values()), name
    for keyword, shared in SHARED.items():
        assert keyword in parameters, f"{name} lacks {keyword}"
        parameter = parameters[keyword]
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({keyword}) has no type"
        if parameter.kind is parameter.KEYWORD_ONLY:  # a shared keyword, not one the packager names itself
            placeholder_device = (name, keyword) == ("create_placeholder_neuropod", "default_input_tensor_device")
            assert parameter.default == ("CPU" if placeholder_device else shared.default), f"{name}({keyword}) default"
        assert re.search(rf"^\s+{keyword}: \S", function.__doc__, re.M), f"{name}'s docstring lacks {keyword}"
    assert "**shared" not in function.__doc__  # the marker line became the keywords' lines


@pytest.mark.parametrize("name", PACKAGERS)
def test_help_lists_the_shared_keywords(name):
    text = pydoc.render_doc(_packager(name), renderer=pydoc.plaintext)
    assert "package_as_zip: 'bool' = True" in text
    assert "keep_failed: leave a package whose self-test failed" in text


@pytest.mark.parametrize("name", PACKAGERS)
def test_the_typed_dict_a_packager_unpacks_is_what_it_takes_at_runtime(name):
    """What type checkers see (``**shared: Unpack[X]``) and what the decorator gives agree, with no overlap."""
    function = _packager(name)
    annotation = function.__wrapped__.__annotations__["shared"]  # a string: the modules use postponed annotations
    typed_dict = getattr(_shared, re.fullmatch(r"Unpack\[(\w+)\]", annotation).group(1))
    own = inspect.signature(function.__wrapped__).parameters
    keyword_only = [p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert set(typed_dict.__annotations__) == set(SHARED) - set(own)
    assert set(typed_dict.__annotations__) <= set(keyword_only)


@pytest.mark.parametrize("name", PACKAGERS)
def test_an_unknown_keyword_is_pythons_type_error_naming_it(name):
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument 'test_inputs'$"):
        _packager(name)("unused", "m", test_inputs={})


def test_a_keyword_given_twice_is_refused_as_python_would(tmp_path):
    with pytest.raises(TypeError, match="multiple values for argument 'input_spec'"):
        _packager("create_placeholder_neuropod")(tmp_path / "p", "m", ADDITION_INPUTS, ADDITION_OUTPUTS, input_spec=[])


def test_no_packager_source_repeats_a_shared_keyword():
    """Each shared keyword is declared in _shared.py alone: no packager lists it as a parameter or a doc line."""
    offenders = []
    for path in sorted((SRC / "backends").glob("*/packager.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in packagers._PACKAGERS:
                own = {a.arg for a in (*node.args.args, *node.args.kwonlyargs)}
                for keyword in SHARED:
                    if keyword in own and keyword not in {"input_spec", "output_spec", "requirements"}:
                        offenders.append(f"{path.parent.name}: {node.name}({keyword})")
                    documented = re.search(rf"^\s+{keyword}: ", ast.get_docstring(node) or "", re.M)
                    if documented and keyword not in own:
                        offenders.append(f"{path.parent.name}: {node.name} documents {keyword}")
    assert offenders == []


def test_the_shared_defaults_are_the_pipelines():
    from neuropod.packagers._pipeline import create_neuropod

    pipeline = inspect.signature(create_neuropod).parameters
    defaults = {name: shared.default for name, shared in SHARED.items()}
    assert defaults == {name: pipeline[name].default for name in SHARED}


def test_the_static_imports_of_neuropod_packagers_name_the_modules_it_imports_at_runtime():
    tree = ast.parse((SRC / "packagers" / "__init__.py").read_text())
    static = {
        alias.name: f"neuropod.{node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 2
        for alias in node.names
    }
    assert static == packagers._PACKAGERS


def test_shared_keywords_reach_the_package(tmp_path):
    path = _packager("create_placeholder_neuropod")(
        tmp_path / "p", "m", ADDITION_INPUTS, ADDITION_OUTPUTS, package_as_zip=False, requirements=["numpy==1.0"]
    )
    assert (path / "0" / "requirements.lock").read_text() == "numpy==1.0\n"
    assert '"CPU"' in (path / "config.json").read_text()  # the placeholder's own default device


def test_the_pytorch_packager_passes_its_positional_requirements_on(tmp_path):
    code = tmp_path / "code" / "model_code"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("def get_model(data):\n    return lambda **inputs: {'out': inputs['x']}\n")
    path = _packager("create_pytorch_neuropod")(
        tmp_path / "p",
        "m",
        [],
        [{"python_root": str(tmp_path / "code"), "dirs_to_package": ["model_code"]}],
        "model_code",
        "get_model",
        [f"numpy=={np.__version__}"],
        package_as_zip=False,
        input_spec=[{"name": "x", "dtype": "float32", "shape": (None,)}],
        output_spec=[{"name": "out", "dtype": "float32", "shape": (None,)}],
    )
    assert (path / "0" / "requirements.lock").read_text() == f"numpy=={np.__version__}\n"


@pytest.mark.parametrize("name", ["create_jax_neuropod", "create_onnx_neuropod", "create_torch_export_neuropod"])
def test_a_packager_that_needs_both_specs_names_itself_when_one_is_missing(tmp_path, name):
    from neuropod.errors import SpecError

    with pytest.raises(SpecError, match=rf"^{name}: input_spec= and output_spec= are required"):
        _packager(name)(tmp_path / "p", "m", object(), input_spec=ADDITION_INPUTS)
    assert not (tmp_path / "p").exists()
