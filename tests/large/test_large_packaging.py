"""Large models are streamed (issue 12, item 2), on a 40 MB model so CI stays quick.

Behaviour only, no timings: the packaging and the first load never hold the
model in Python memory (tracemalloc's peak stays a fraction of the model),
incompressible weights are stored while metadata is deflated, each step
reports progress in bytes, and the self-test leaves no copy behind. The
500 MB figures (time against ``torch.jit.save``, peak resident memory) come
from ``bench/large_models.py`` and are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import os
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from neuropod import load_neuropod
from neuropod.packagers import create_python_neuropod

MODEL_BYTES = 40 << 20
X = np.ones((2, 3), np.float32)
SPEC = {
    "input_spec": [{"name": "x", "dtype": "float32", "shape": [None, 3]}],
    "output_spec": [{"name": "y", "dtype": "float32", "shape": [None, 3]}],
}
CODE = """
import os
import numpy as np

def get_model(data_root):
    size = os.path.getsize(os.path.join(data_root, "weights.bin"))  # never read whole
    def model(x):
        return {"y": x * 0 + size}
    return model
"""


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(MODEL_BYTES // (4 << 20)):
            f.write(rng.standard_normal(1 << 20).astype(np.float32).tobytes())  # weights: do not compress
    return path


@pytest.fixture
def code_root(tmp_path: Path) -> Path:
    package = tmp_path / "code" / "big_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(CODE)
    return tmp_path / "code"


@pytest.fixture
def show_progress(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    monkeypatch.setenv("NEUROPOD_PROGRESS", "log")
    monkeypatch.setenv("NEUROPOD_PROGRESS_AFTER_S", "0")  # every step shows, however quick
    caplog.set_level(logging.INFO, logger="neuropod.progress")
    return caplog


def _package(target: Path, weights: Path, code_root: Path, **options) -> Path:
    return create_python_neuropod(
        target,
        "big",
        data_paths=[{"path": str(weights), "packaged_name": "weights.bin"}],
        code_path_spec=[{"python_root": str(code_root), "dirs_to_package": ["big_model"]}],
        entrypoint_package="big_model.main",
        entrypoint="get_model",
        test_input_data={"x": X},
        test_expected_out={"y": np.full((2, 3), MODEL_BYTES, np.float32)},
        **SPEC,
        **options,
    )


def _peak_python_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_packaging_and_loading_stream_the_model(tmp_path, weights, code_root):
    path = tmp_path / "big.zip"
    peak = _peak_python_bytes(lambda: _package(path, weights, code_root))
    assert peak < MODEL_BYTES // 4, f"packaging held {peak} bytes of a {MODEL_BYTES}-byte model in memory"

    def first_load() -> None:
        with load_neuropod(path) as model:
            assert model.infer({"x": X})["y"][0, 0] == MODEL_BYTES

    peak = _peak_python_bytes(first_load)
    assert peak < MODEL_BYTES // 4, f"the first load held {peak} bytes of a {MODEL_BYTES}-byte model in memory"


def test_weights_are_stored_and_metadata_deflated(tmp_path, weights, code_root):
    path = _package(tmp_path / "big.zip", weights, code_root)
    with zipfile.ZipFile(path) as zf:
        methods = {info.filename: info.compress_type for info in zf.infolist() if not info.is_dir()}
    assert methods["0/data/weights.bin"] == zipfile.ZIP_STORED
    assert methods["config.json"] == zipfile.ZIP_DEFLATED
    assert methods["0/code/big_model/main.py"] == zipfile.ZIP_DEFLATED
    assert path.stat().st_size > MODEL_BYTES  # stored: nothing saved, nothing spent deflating
    forced = _package(tmp_path / "deflated.zip", weights, code_root, zip_compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(forced) as zf:
        assert zf.getinfo("0/data/weights.bin").compress_type == zipfile.ZIP_DEFLATED


def test_each_step_reports_progress_in_bytes_once(tmp_path, weights, code_root, show_progress):
    path = _package(tmp_path / "big.zip", weights, code_root)
    packaging = [r.getMessage() for r in show_progress.records if r.name == "neuropod.progress"]
    show_progress.clear()
    load_neuropod(path).close()
    loading = [r.getMessage() for r in show_progress.records if r.name == "neuropod.progress"]
    for step in ("copy weights.bin", "zip big.zip"):
        lines = [line for line in packaging if line.startswith(f"{step}: ")]
        assert len(lines) == 1 and re.match(rf"{step}: done, 40(\.0)? MiB in", lines[0]), (step, packaging)
    # The self-test runs on the tree it zipped: the zip is neither extracted nor hashed again.
    assert not [line for line in packaging if line.startswith(("extract ", "hash ", "verify "))], packaging
    assert len([line for line in loading if line.startswith("extract big.zip: ")]) == 1, loading
    assert any(re.match(r"extract big\.zip: done, 40(\.0)? MiB", line) for line in loading), loading
    tree = _package(tmp_path / "tree", weights, code_root, package_as_zip=False)
    assert tree.is_dir()
    assert any(r.getMessage().startswith("hash tree: done") for r in show_progress.records)


def test_steps_quicker_than_the_threshold_stay_quiet(tmp_path, weights, code_root, capsys, monkeypatch):
    from neuropod.packagers import create_placeholder_neuropod

    monkeypatch.delenv("NEUROPOD_PROGRESS_AFTER_S", raising=False)
    create_placeholder_neuropod(tmp_path / "p.zip", "p", **SPEC, test_input_data={"x": X})
    assert capsys.readouterr().err == ""  # milliseconds each, at the default second
    monkeypatch.setenv("NEUROPOD_PROGRESS_AFTER_S", "3600")
    with load_neuropod(_package(tmp_path / "big.zip", weights, code_root)):
        pass
    assert capsys.readouterr().err == ""  # 40 MiB, but no step took an hour


def test_without_logging_configured_progress_lines_reach_stderr(tmp_path, weights, code_root):
    import subprocess
    import sys

    script = (
        "import sys; from neuropod.package.archive import write_zip; from pathlib import Path;"
        "write_zip(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    tree = tmp_path / "t"
    tree.mkdir()
    os.link(weights, tree / "w.bin")
    env = {**os.environ, "NEUROPOD_PROGRESS": "auto", "NEUROPOD_PROGRESS_AFTER_S": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tree), str(tmp_path / "o.zip")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert re.match(r"zip o\.zip: done, 40(\.0)? MiB in", result.stderr), result.stderr  # not a terminal: a line


def test_the_self_test_leaves_no_second_copy(tmp_path, weights, code_root):
    _package(tmp_path / "out" / "big.zip", weights, code_root)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["big.zip"]
    cache = Path(os.environ["NEUROPOD_CACHE_DIR"]) / "packages"
    assert not cache.exists() or not any(cache.iterdir())


def test_a_torchscript_model_is_stored_not_deflated(tmp_path):
    torch = require("torch")
    from neuropod.packagers import create_torchscript_neuropod

    module = torch.jit.script(torch.nn.Linear(1024, 1024, bias=False))  # 4 MiB of random weights
    path = create_torchscript_neuropod(
        tmp_path / "ts.zip",
        "linear",
        module=module,
        input_spec=[{"name": "input", "dtype": "float32", "shape": [None, 1024]}],
        output_spec=[{"name": "output", "dtype": "float32", "shape": [None, 1024]}],
    )
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("0/data/model.pt").compress_type == zipfile.ZIP_STORED
