"""``python -m neuropod.loader``: the original's out-of-process evaluation entry point (issue 28 item 4)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from neuropod import load_neuropod
from neuropod.packagers import create_placeholder_neuropod

SPEC = dict(
    input_spec=[{"name": "x", "dtype": "float32", "shape": ("batch",)}],
    output_spec=[{"name": "out", "dtype": "float32", "shape": ("batch",)}],
)
INPUTS = {"x": np.arange(4, dtype=np.float32)}


def _pickle(path, value, mode=0o600):
    with open(path, "wb") as f:
        pickle.dump(value, f)
    os.chmod(path, mode)
    return path


@pytest.fixture
def package(tmp_path):
    return create_placeholder_neuropod(tmp_path / "model", "model", **SPEC, package_as_zip=False)


def _run(package, input_path, args_path, output_path):
    command = [sys.executable, "-m", "neuropod.loader", "--neuropod-path", str(package)]
    command += ["--input-pkl-path", str(input_path), "--output-pkl-path", str(output_path)]
    if args_path is not None:
        command += ["--args-pkl-path", str(args_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_originals_four_arguments_run_the_model_and_pickle_its_outputs(tmp_path, package):
    output = tmp_path / "out.pkl"
    output.touch(mode=0o600)  # as the original's eval_in_new_process leaves it: an empty mkstemp file
    done = _run(
        package,
        _pickle(tmp_path / "in.pkl", INPUTS),
        _pickle(tmp_path / "args.pkl", {"_always_use_native": False, "visible_gpu": None}),
        output,
    )
    assert done.returncode == 0, done.stderr
    with open(output, "rb") as f:
        outputs = pickle.load(f)
    with load_neuropod(package) as model:
        np.testing.assert_array_equal(outputs["out"], model.infer(INPUTS)["out"])


def test_a_refused_load_keyword_is_one_line_and_exit_2(tmp_path, package):
    done = _run(
        package, _pickle(tmp_path / "in.pkl", INPUTS), _pickle(tmp_path / "a.pkl", {"bogus": 1}), tmp_path / "o"
    )
    assert done.returncode == 2
    assert "unknown option 'bogus'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_pickle_others_can_write_is_not_read(tmp_path, package, mode):
    done = _run(package, _pickle(tmp_path / "in.pkl", INPUTS, mode), None, tmp_path / "out.pkl")
    assert done.returncode == 2
    assert "writable by other users" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.pkl").exists()


def test_a_linked_pickle_is_not_read(tmp_path, package):
    (tmp_path / "in.pkl").symlink_to(_pickle(tmp_path / "real.pkl", INPUTS))
    done = _run(package, tmp_path / "in.pkl", None, tmp_path / "out.pkl")
    assert done.returncode == 2 and "symbolic link" in done.stderr


def test_a_pickle_of_another_user_is_not_read(tmp_path, package):
    if os.getuid() == 0:
        theirs = _pickle(tmp_path / "theirs.pkl", INPUTS, 0o644)
        os.chown(theirs, 65534, 65534)
    else:
        theirs = "/etc/passwd"  # root's, readable by all: refused before it is unpickled
    done = _run(package, theirs, None, tmp_path / "out.pkl")
    assert done.returncode == 2 and "not by this process's user" in done.stderr


def test_the_output_is_not_written_through_a_link(tmp_path, package):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "out.pkl").symlink_to(victim)
    done = _run(package, _pickle(tmp_path / "in.pkl", INPUTS), None, tmp_path / "out.pkl")
    assert done.returncode == 2 and "symbolic link" in done.stderr
    assert victim.read_text() == "keep me"


def test_a_pickle_that_is_not_a_dict_of_arguments_is_refused(tmp_path, package):
    done = _run(package, _pickle(tmp_path / "in.pkl", INPUTS), _pickle(tmp_path / "a.pkl", [1]), tmp_path / "o")
    assert done.returncode == 2 and "expected a dict of load_neuropod keyword arguments" in done.stderr
