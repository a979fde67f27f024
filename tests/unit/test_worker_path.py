"""A worker's PYTHONPATH holds neuropod's own code and nothing else of this process's environment."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import neuropod
from neuropod.worker_path import worker_code_root

PACKAGE = Path(neuropod.__file__).resolve().parent


def _root_seen_from(site: Path, cache: Path) -> Path:
    """worker_code_root() in a fresh interpreter that imports neuropod from ``site``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), NEUROPOD_CACHE_DIR=str(cache))
    code = "from neuropod.worker_path import worker_code_root; print(worker_code_root())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return Path(result.stdout.strip())


def _importable(directory: Path) -> set:
    return {
        p.name
        for p in directory.iterdir()
        if not p.name.endswith((".egg-info", ".dist-info")) and p.name != "__pycache__"
    }


def test_this_checkouts_root_holds_only_neuropod() -> None:
    assert _importable(Path(worker_code_root())) == {"neuropod"}


def test_a_site_packages_with_other_packages_gets_a_copy_of_neuropod_alone(tmp_path: Path) -> None:
    """The install case: neuropod beside numpy & co. The worker gets a copy holding neuropod only, even when
    site-packages is read-only, and the same copy on the next start."""
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "neuropod", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "numpy_of_another_python").mkdir()
    (site / "numpy_of_another_python" / "__init__.py").write_text("raise ImportError('built for another Python')\n")
    for folder, _, _ in os.walk(site):  # read-only, as a system install
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        root = _root_seen_from(site, tmp_path / "cache")
        assert root.is_relative_to(tmp_path / "cache")
        assert _importable(root) == {"neuropod"}
        assert (root / "neuropod" / "worker.py").read_bytes() == (PACKAGE / "worker.py").read_bytes()
        assert _root_seen_from(site, tmp_path / "cache") == root  # made once per content
    finally:
        for folder, _, _ in os.walk(site):
            os.chmod(folder, stat.S_IRWXU)


def test_an_edited_install_gets_a_fresh_copy(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    shutil.copytree(PACKAGE, site / "neuropod", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "other").mkdir()
    first = _root_seen_from(site, tmp_path / "cache")
    (site / "neuropod" / "worker.py").write_text((PACKAGE / "worker.py").read_text() + "\n# edited\n")
    second = _root_seen_from(site, tmp_path / "cache")
    assert second != first and (second / "neuropod" / "worker.py").read_text().endswith("# edited\n")
