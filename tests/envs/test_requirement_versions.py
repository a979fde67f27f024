"""Pinned requirements are compared by the standard version rules (PEP 440), not as strings."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from neuropod import load_neuropod
from neuropod.backends.python.backend import check_requirements
from neuropod.cli import main
from neuropod.envs.need import Need, need_of
from neuropod.errors import PackageError, RequirementsError
from neuropod.package import open_package
from neuropod.packagers import create_python_neuropod
from neuropod.requirements import requirement_problems
from neuropod.versions import VersionRange


def _python_need(*requirements: str) -> Need:
    return Need(
        source="",
        platform="python",
        distribution=None,
        framework_range=VersionRange.parse("*"),
        requirements=requirements,
    )


@pytest.mark.parametrize(
    "line, installed",
    [
        ("torch==2.13.0", "2.13.0+cpu"),  # a local version label meets a pin without one
        ("numpy==2.0", "2.0.0"),  # zero padding
        ("tensorflow==2.16.0rc1", "2.16.0-rc.1"),  # a pre-release, spelled another way
        ("Six==1.16.0", "1.16.0"),  # names compare normalised
    ],
)
def test_an_equivalent_version_meets_the_pin(line, installed):
    need = _python_need(line)
    assert need.problems("3.11.0", {line.partition("==")[0].lower(): installed}) == []


@pytest.mark.parametrize(
    "line, installed",
    [
        ("torch==2.13.0+cu121", "2.13.0+cpu"),  # a pinned local label must match
        ("pkg==2.0", "1!2.0"),  # another epoch
        ("pkg==2.0", "2.0rc1"),  # the pre-release is not the release
        ("pkg==2.0", "2.0.post1"),
    ],
)
def test_a_different_version_is_named_with_what_was_found(line, installed):
    assert _python_need(line).problems("3.11.0", {"pkg": installed, "torch": installed}) == [
        f"{line} (found {installed})"
    ]


def test_a_missing_distribution_and_a_non_pep440_version_are_problems():
    found = {"legacy": "not-a-version"}
    assert requirement_problems(["absent==1.0", "legacy==1.0"], found.get) == [
        "absent==1.0 (not installed)",
        "legacy==1.0 (found not-a-version)",
    ]


def test_the_worker_check_in_this_environment_uses_the_same_rules():
    padded = np.__version__ + ".0"  # 2.1.3 -> 2.1.3.0: the same version by PEP 440
    check_requirements([f"numpy=={padded}"])
    with pytest.raises(RequirementsError, match=rf"numpy==0\.1 \(found {np.__version__}\)"):
        check_requirements(["numpy==0.1"])
    with pytest.raises(PackageError, match="'==1.0' is not a requirement"):
        check_requirements(["==1.0"])


def test_a_package_pinned_to_an_equivalent_version_loads_here(tmp_path):
    """The load plans no environment build for a pin this process meets (it used to: ``found 2.1.3``)."""
    code = tmp_path / "src" / "numpy_pin"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "main.py").write_text(
        textwrap.dedent(
            """
            def get_model(data_root):
                return lambda x: {"y": x + 1}
            """
        )
    )
    path = create_python_neuropod(
        neuropod_path=tmp_path / "pinned",
        model_name="pinned",
        data_paths=[],
        code_path_spec=[{"python_root": str(code.parent), "dirs_to_package": ["numpy_pin"]}],
        entrypoint_package="numpy_pin.main",
        entrypoint="get_model",
        input_spec=[{"name": "x", "dtype": "float32", "shape": [1]}],
        output_spec=[{"name": "y", "dtype": "float32", "shape": [1]}],
        requirements=[f"numpy=={np.__version__}.0"],
    )
    assert need_of(open_package(path)).problems_here() == []
    with load_neuropod(path) as model:
        assert model.infer({"x": np.ones(1, np.float32)})["y"].tolist() == [2.0]
    doctor = CliRunner().invoke(main, ["envs", "doctor", str(path)])
    assert doctor.exit_code == 0, doctor.output
    assert "serves it (loads in-process)" in doctor.output


def test_packaging_is_a_worker_requirement_only_where_requirements_are_checked():
    assert _python_need().worker_requirements == ("numpy",)
    assert _python_need("six==1.16.0").worker_requirements == ("numpy", "packaging")
