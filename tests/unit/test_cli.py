import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ADDITION_INPUTS, ADDITION_OUTPUTS
from neuropod.cli import main
from neuropod.packagers import create_placeholder_neuropod

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def model_path(tmp_path):
    return create_placeholder_neuropod(
        tmp_path / "m.zip", "addition", ADDITION_INPUTS, ADDITION_OUTPUTS, test_input_data={"x": X, "y": X}
    )


def test_placeholder_command_writes_a_loadable_package(runner, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "adder", "input_spec": ADDITION_INPUTS, "output_spec": ADDITION_OUTPUTS}))
    result = runner.invoke(main, ["placeholder", "--spec", str(spec), "--seed", "3", str(tmp_path / "out.zip")])
    assert result.exit_code == 0, result.output
    inspected = runner.invoke(main, ["inspect", "--json", str(tmp_path / "out.zip")])
    info = json.loads(inspected.output)
    assert info["name"] == "adder" and info["platform"] == "placeholder" and info["manifest"] == "verified"


def test_inspect_human_output(runner, model_path):
    result = runner.invoke(main, ["inspect", str(model_path)])
    assert result.exit_code == 0, result.output
    for fragment in (
        "name:      addition",
        "platform:  placeholder *",
        "x",
        "float32",
        "['batch', None]",
        "x=CPU",
        "test_data.npz",
        "verified",
    ):
        assert fragment in result.output


def test_infer_reads_npy_and_writes_outputs(runner, model_path, tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", X)
    args = ["infer", str(model_path), "-i", f"x={tmp_path / 'x.npy'}", "-i", f"y={tmp_path / 'y.npy'}"]
    result = runner.invoke(main, args + ["--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)["out"]
    assert out["shape"] == [2, 2] and out["dtype"] == "float32"
    result = runner.invoke(main, args + ["--output", str(tmp_path / "outs")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "outs" / "out.npy").shape == (2, 2)


def test_test_command_passes_and_fails(runner, model_path, tmp_path):
    assert runner.invoke(main, ["test", str(model_path)]).exit_code == 0
    # Same problem, stored expectations that the model cannot meet -> exit 1.
    bad = create_placeholder_neuropod(
        tmp_path / "bad",
        "addition",
        ADDITION_INPUTS,
        ADDITION_OUTPUTS,
        test_input_data={"x": X, "y": X},
        package_as_zip=False,
    )
    from neuropod.package.manifest import write_manifest
    from neuropod.package.testdata import write_test_data

    write_test_data(bad, {"x": X, "y": X}, {"out": X + 100})
    write_manifest(bad)
    result = runner.invoke(main, ["test", str(bad)])
    assert result.exit_code == 1
    assert "output 'out': expected" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["inspect", "/no/such/package"], "no such package"),
        (["infer", "{model}", "-i", "x"], "expected NAME=FILE.npy"),
        (["infer", "{model}", "-i", "x=/no/file.npy"], "cannot read"),
        (["infer", "{model}", "-i", "q={xfile}"], "input 'q' is not in the spec"),
        (["placeholder", "--spec", "{badspec}", "{tmp}/o"], "tensor 'x': dtype"),
    ],
)
def test_user_errors_are_one_clean_line(runner, model_path, tmp_path, args, fragment):
    np.save(tmp_path / "x.npy", X)
    badspec = tmp_path / "bad.json"
    badspec.write_text(json.dumps({"input_spec": [{"name": "x", "dtype": "complex", "shape": [1]}], "output_spec": []}))
    args = [a.format(model=model_path, xfile=tmp_path / "x.npy", badspec=badspec, tmp=tmp_path) for a in args]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    assert fragment in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["inspect", "--json", "{model}"], ["inspect", "/no/such"]])
def test_python_dash_m_neuropod_is_the_neuropod_command(model_path, args):
    import subprocess
    import sys
    from pathlib import Path

    args = [arg.format(model=model_path) for arg in args]
    script = Path(sys.executable).with_name("neuropod")
    by_module = subprocess.run([sys.executable, "-m", "neuropod", *args], capture_output=True, text=True)
    by_script = subprocess.run([str(script), *args], capture_output=True, text=True)
    assert by_module.returncode == by_script.returncode
    assert (by_module.stdout, by_module.stderr) == (by_script.stdout, by_script.stderr)
    assert by_module.stdout or by_module.stderr


# --- issue 12, items 4 and 10: user errors through the real command, one line, exit 2 ---


def _inputs_dir(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", X)
    np.savez(tmp_path / "xy.npz", x=X, y=X)
    (tmp_path / "text.npy").write_text("1 2 3\n")
    return tmp_path


def _one_line_exit_2(result, fragment):
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        (["x={d}/text.npy", "y={d}/y.npy"], "text.npy: not an .npy file"),
        (["x={d}/xy.npz"], "this is an .npz archive, not an .npy file; pass it as -i"),
        (["x={d}/x.npy", "x={d}/y.npy"], "input 'x' is given twice"),
        (["{d}/xy.npz", "x={d}/x.npy"], "input 'x' is given twice"),
        (["{d}/x.npy"], "expected NAME=FILE.npy, or an .npz file"),
        (["x={d}/x.npy"], "input 'y' was not given"),  # named before the model is called
    ],
)
def test_infer_input_mistakes_are_one_line(runner, model_path, tmp_path, inputs, fragment):
    folder = _inputs_dir(tmp_path)
    args = ["infer", str(model_path)]
    for item in inputs:
        args += ["-i", item.format(d=folder)]
    _one_line_exit_2(runner.invoke(main, args), fragment)


def test_infer_takes_an_npz_of_several_inputs(runner, model_path, tmp_path):
    folder = _inputs_dir(tmp_path)
    by_npz = runner.invoke(main, ["infer", str(model_path), "-i", str(folder / "xy.npz"), "--json"])
    by_npy = runner.invoke(
        main, ["infer", str(model_path), "-i", f"x={folder / 'x.npy'}", "-i", f"y={folder / 'y.npy'}", "--json"]
    )
    assert by_npz.exit_code == 0, by_npz.output
    assert json.loads(by_npz.output) == json.loads(by_npy.output)


@pytest.mark.parametrize("command", ["inspect", "infer", "test"])
@pytest.mark.parametrize("url", ["s3://bucket/model.zip", "gs://bucket/model"])
def test_unsupported_url_schemes_say_so(runner, command, url):
    _one_line_exit_2(runner.invoke(main, [command, url]), f"{url.split(':')[0]}:// URLs are not supported")


def test_test_command_without_expected_outputs_says_it_checked_nothing(runner, model_path):
    result = runner.invoke(main, ["test", str(model_path)])  # the fixture stores inputs only
    assert result.exit_code == 0, result.output
    assert "checked nothing" in result.output and "no expected outputs" in result.output
    assert "PASSED" not in result.output


def _neuropod(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "neuropod", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_a_missing_serve_extra_for_grpc_urls_names_it(tmp_path, model_path):
    """grpc:// without grpcio: FrameworkNotInstalledError naming neuropod-python[serve], from the API and the CLI."""
    import sys

    blocker = tmp_path / "blocked"
    (blocker / "grpc").mkdir(parents=True)
    (blocker / "grpc" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'grpc'\", name='grpc')\n"
    )
    env = {"PYTHONPATH": str(blocker)}
    api = (
        "from neuropod import load_neuropod\nfrom neuropod.errors import FrameworkNotInstalledError\n"
        "try:\n    load_neuropod('grpc://127.0.0.1:1/m')\nexcept FrameworkNotInstalledError as exc:\n    print(exc)\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", api], capture_output=True, text=True, env={**__import__("os").environ, **env}
    )
    assert "neuropod-python[serve]" in out.stdout, out.stderr
    np.save(tmp_path / "x.npy", X)
    result = _neuropod("infer", "grpc://127.0.0.1:1/m", "-i", f"x={tmp_path / 'x.npy'}", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("Error: FrameworkNotInstalledError:")
    assert "neuropod-python[serve]" in result.stderr


def test_a_busy_grpc_port_is_one_line(model_path):
    import socket

    from conftest import require

    require("grpc")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _neuropod("serve", str(model_path), "--grpc-port", str(port), "--http-port", "0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: ServerError: gRPC: cannot listen on 127.0.0.1:{port} (in use, or not an address here)"]


def test_serve_token_file_is_read_and_refused_with_token(tmp_path, model_path):
    token_file = tmp_path / "token"
    token_file.write_text("")
    result = _neuropod("serve", str(model_path), "--token-file", str(token_file))
    assert result.returncode == 2 and "the file is empty" in result.stderr and "Traceback" not in result.stderr
    token_file.write_text("s3cret\n")
    result = _neuropod("serve", str(model_path), "--token-file", str(token_file), env={"NEUROPOD_SERVE_TOKEN": "other"})
    assert result.returncode == 2 and "give the token once" in result.stderr
