"""Custom torch ops: a TORCH_LIBRARY op built here with g++, shipped in a TorchScript package, loaded by the backend.

The op library is compiled once per session (about 10 s with g++ -O1). The
package is run in a fresh process, where nothing but the backend can have
loaded the op: that proves the package brings it.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import require, require_command

torch = require("torch")

from neuropod import load_neuropod  # noqa: E402
from neuropod.errors import InferenceError  # noqa: E402
from neuropod.packagers import create_torchscript_neuropod  # noqa: E402

OP_SOURCE = textwrap.dedent(
    """
    #include <torch/library.h>
    #include <ATen/ATen.h>

    at::Tensor add_then_double(const at::Tensor& x, const at::Tensor& y) {
      return (x + y) * 2;
    }

    TORCH_LIBRARY(neuropod_test, m) {
      m.def("add_then_double(Tensor x, Tensor y) -> Tensor", &add_then_double);
    }
    """
)
SPEC_IN = [{"name": "x", "dtype": "float32", "shape": ["n"]}, {"name": "y", "dtype": "float32", "shape": ["n"]}]
SPEC_OUT = [{"name": "out", "dtype": "float32", "shape": ["n"]}]


@pytest.fixture(scope="session")
def op_library(tmp_path_factory):
    compiler = require_command("g++")
    from torch.utils import cpp_extension

    build = tmp_path_factory.mktemp("custom_op")
    source = build / "add_then_double.cpp"
    source.write_text(OP_SOURCE)
    library = build / "libadd_then_double.so"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [compiler, "-shared", "-fPIC", "-O1", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", str(source)]
    command += [f"-I{path}" for path in cpp_extension.include_paths()]
    command += [f"-L{path}" for path in cpp_extension.library_paths()]
    command += [f"-Wl,-rpath,{path}" for path in cpp_extension.library_paths()]
    command += ["-lc10", "-ltorch_cpu", "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return library


@pytest.fixture(scope="session")
def op_package(op_library, tmp_path_factory):
    torch.ops.load_library(str(op_library))  # scripting needs the op's schema in this process

    class UsesOp(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.ops.neuropod_test.add_then_double(x, y)

    x = np.array([1, 2, 3], np.float32)
    return create_torchscript_neuropod(
        neuropod_path=tmp_path_factory.mktemp("op_pkg") / "op.zip",
        model_name="uses_op",
        module=torch.jit.script(UsesOp()),
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        custom_ops=[op_library],
        test_input_data={"x": x, "y": x},  # the self-test runs here, where the op is already loaded
        test_expected_out={"out": (x + x) * 2},
    )


def test_package_carries_the_op_library(op_package, op_library):
    from neuropod.package import open_package

    package = open_package(op_package)
    assert list(package.config.custom_ops) == [op_library.name]
    assert [p.name for p in package.custom_op_paths()] == [op_library.name]


def test_op_is_loaded_by_the_backend_in_a_fresh_process(op_package):
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import torch
        from neuropod import load_neuropod

        assert not torch.ops.loaded_libraries  # nothing but the backend loads the op here
        with load_neuropod(sys.argv[1]) as model:
            out = model.infer({"x": np.array([1, 2], np.float32), "y": np.array([10, 20], np.float32)})["out"]
        print(out.tolist())
        """
    )
    result = subprocess.run([sys.executable, "-c", code, str(op_package)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[22.0, 44.0]"


def test_without_its_op_library_the_model_cannot_run(op_package, tmp_path):
    # The same TorchScript file packaged without custom_ops fails to load in a fresh process.
    from neuropod.package import open_package

    model_file = open_package(op_package).data_dir / "model.pt"
    code = textwrap.dedent(
        """
        import sys, warnings
        import torch
        warnings.simplefilter("ignore")
        try:
            torch.jit.load(sys.argv[1])
        except Exception as exc:
            print("refused:", type(exc).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", code, str(model_file)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused:" in result.stdout


def test_op_runs_in_process_too(op_package):
    with load_neuropod(op_package) as model:
        out = model.infer({"x": np.ones(4, np.float32), "y": np.ones(4, np.float32)})["out"]
    np.testing.assert_array_equal(out, np.full(4, 4, np.float32))


def test_a_broken_op_library_is_a_clear_error(tmp_path):
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not an ELF file")

    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    path = create_torchscript_neuropod(
        neuropod_path=tmp_path / "p.zip",
        model_name="p",
        module=torch.jit.script(Plain()),
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        custom_ops=[bogus],
    )
    with pytest.raises(InferenceError, match="custom op 'libbogus.so' could not be loaded"):
        load_neuropod(path)


def test_two_packages_with_the_same_op_share_one_load(op_package, op_library, tmp_path):
    # A second package unpacks the same library to another path; loading it again would abort the process.
    class AlsoUsesOp(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.ops.neuropod_test.add_then_double(x, y) + 1

    second = create_torchscript_neuropod(
        neuropod_path=tmp_path / "second.zip",
        model_name="second",
        module=torch.jit.script(AlsoUsesOp()),
        input_spec=SPEC_IN,
        output_spec=SPEC_OUT,
        custom_ops=[op_library],
    )
    ones = {"x": np.ones(2, np.float32), "y": np.ones(2, np.float32)}
    with load_neuropod(op_package) as first, load_neuropod(second) as other:
        assert first.infer(ones)["out"].tolist() == [4, 4]
        assert other.infer(ones)["out"].tolist() == [5, 5]
