"""Issue 25, finding 3: a broadcast tensor of terabytes is refused before any copy, both ways.

``np.broadcast_to(np.float32(0), (1 << 20, 1 << 20))`` costs 4 bytes and is
4 TiB logically. Each case runs in a child interpreter under hard limits
(address space and file size: a memfd or tmpfs segment is a file, and its pages
are not address space), so a regression fails the test with an error from the
limit instead of filling the machine's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neuropod.packagers import create_python_neuropod

SRC = str(Path(__file__).resolve().parents[2] / "src")

MODEL_CODE = """
import numpy as np

def get_model(data_root):
    def run(x, n=None):
        if n is None:
            return {"y": x}
        side = int(n[0])  # an output of side x side float32 that costs 4 bytes: a broadcast view
        return {"y": np.broadcast_to(np.float32(0), (side, side))}
    return run
"""

CHILD = """
import json, resource, signal, sys
sys.path.insert(0, {src!r})
import numpy as np
from neuropod import load_neuropod
from neuropod.errors import SharedMemoryError

# Hard limits for this interpreter and the workers it starts: 4 GiB of address space, and 1 GiB per
# file (shared-memory segments are files). SIGXFSZ would kill instead of failing the write.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

huge = np.broadcast_to(np.float32(0), (1 << 20, 1 << 20))  # 4 TiB logically
result = {{}}
with load_neuropod({path!r}, use_ope=True, **{options}) as model:
    model.infer({{"x": np.ones((2, 2), np.float32)}})
    before = peak_kib()
    for case, inputs in (
        ("input", {{"x": huge}}),
        ("output", {{"x": np.ones((1, 1), np.float32), "n": np.array([1 << 20], np.int64)}}),
    ):
        try:
            model.infer(inputs)
            result[case] = "accepted"
        except SharedMemoryError as exc:
            result[case] = str(exc)
        except Exception as exc:
            result[case] = type(exc).__name__ + ": " + str(exc)
    result["growth_kib"] = peak_kib() - before
    result["after"] = model.infer({{"x": np.full((3, 3), 2.0, np.float32)}})["y"].tolist()
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def broadcaster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broadcaster")
    code = root / "code" / "broadcaster"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text(textwrap.dedent(MODEL_CODE))
    return Path(
        create_python_neuropod(
            neuropod_path=str(root / "package"),
            model_name="broadcaster",
            data_paths=[],
            code_path_spec=[{"python_root": str(root / "code"), "dirs_to_package": ["broadcaster"]}],
            entrypoint_package="broadcaster",
            entrypoint="get_model",
            input_spec=[
                {"name": "x", "dtype": "float32", "shape": [None, None]},
                {"name": "n", "dtype": "int64", "shape": [1]},
            ],
            output_spec=[{"name": "y", "dtype": "float32", "shape": [None, None]}],
        )
    )


def _run(path: Path, options: dict) -> dict:
    script = CHILD.format(src=SRC, path=str(path), options=repr(options))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("options", [{}, {"share_weights": False}], ids=["forked", "loaded"])
def test_a_terabyte_broadcast_input_and_output_are_refused_before_any_copy(broadcaster, options):
    result = _run(broadcaster, options)
    for case, name in (("input", "x"), ("output", "y")):
        message = result[case]
        # The refusal names the tensor, its logical size and the limit (not a failed 4 TiB allocation).
        assert message.startswith(f"{case} {name!r}: float32 [1048576, 1048576]"), message
        assert "4398046511104 bytes logically" in message, message
        assert "max_tensor_bytes=17179869184" in message and "nothing was copied" in message, message
    assert result["growth_kib"] < 1024, result  # no memory growth in the caller: < 1 MiB of peak RSS
    assert result["after"] == [[2.0] * 3] * 3  # the model keeps serving


def test_the_limit_is_an_option_and_available_shared_memory_bounds_it_too(broadcaster):
    result = _run(broadcaster, {"max_tensor_bytes": 1 << 20})
    assert "max_tensor_bytes=1048576 (1.0 MiB)" in result["input"], result
    # Under the option, over the memory this machine has: refused naming what is available.
    result = _run(broadcaster, {"max_tensor_bytes": 1 << 50})
    assert "of shared memory available now" in result["input"], result
    assert "of shared memory available now" in result["output"], result
