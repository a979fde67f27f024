"""Property tests of the package reader (issue 13): generated and mutated packages.

Whatever a package holds, opening, loading and running it gives a result or a
NeuropodError subclass, never another exception and never a hang (each case
has a 10 s alarm). ``NEUROPOD_PROPERTY_EXAMPLES`` sets the cases per test
(default 1,500: about 4,600 in all, some 30 s); a long run sets it to 50,000.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from package_helpers import INPUTS, OUTPUTS, X

from neuropod import load_neuropod
from neuropod.errors import NeuropodError
from neuropod.package import open_package
from neuropod.package.archive import write_zip
from neuropod.packagers import create_placeholder_neuropod

EXAMPLES = int(os.environ.get("NEUROPOD_PROPERTY_EXAMPLES", "1500"))
CASE_TIMEOUT_S = 10

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the alarm below bounds a case; hypothesis' deadline only reports slowness
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)


class CaseHung(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int = CASE_TIMEOUT_S) -> Iterator[None]:
    def hung(*_: Any) -> None:
        raise CaseHung(f"a case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _exercise(path: Path) -> None:
    """Everything a reader does with a package: open, inspect, test data, load, infer."""
    with alarm():
        try:
            package = open_package(path)
            package.files()
            package.backend_config()
            package.requirements()
            package.test_data()
            with load_neuropod(path) as model:
                model.infer({"x": X})
        except NeuropodError:
            pass


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    tree = create_placeholder_neuropod(
        root / "tree", "target", INPUTS, OUTPUTS, package_as_zip=False, test_input_data={"x": X}
    )
    write_zip(tree, root / "stored.zip", compression=zipfile.ZIP_STORED)
    write_zip(tree, root / "deflated.zip", compression=zipfile.ZIP_DEFLATED)
    return root


# --- generated metadata ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["float32", "GPU", "CPU", "x", "batch", "..", "/etc/passwd", "\ud800", "string", "int64"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
_dims = st.lists(
    st.one_of(st.none(), st.integers(-3, 2**40), st.sampled_from(["batch", "", 2.5, True, [1]])), max_size=4
)
_spec = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["x", "out", "y", "", "../x", "a/b"]), _scalars),
        "dtype": st.one_of(st.sampled_from(["float32", "float64", "string", "bfloat16", "complex64"]), _scalars),
        "shape": st.one_of(_dims, _scalars),
    },
    optional={"extra": _json},
)
_config = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("target"), _scalars),
        "platform": st.one_of(st.sampled_from(["placeholder", "python", "torchscript", "nope"]), _scalars),
        "platform_version_semver": st.one_of(st.sampled_from(["*", ">=1", "bad range", "^^"]), _scalars),
        "input_spec": st.one_of(st.lists(_spec, max_size=3), _json),
        "output_spec": st.one_of(st.lists(_spec, max_size=3), _json),
        "custom_ops": st.one_of(st.lists(st.sampled_from(["op.so", "../op.so", "/lib/x.so", ""]), max_size=2), _json),
        "input_tensor_device": st.one_of(st.dictionaries(st.sampled_from(["x", "y"]), _scalars), _json),
    },
)
_backend_config = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "seed": st.one_of(st.integers(-5, 2**70), _scalars),
            "free_dim_size": st.one_of(st.integers(-5, 2**30), _scalars),
            "inputs_optional": _scalars,
            "entrypoint_package": _scalars,
            "entrypoint": _scalars,
        },
    ),
    _json,
)


@SETTINGS
@given(config=_config, backend=_backend_config, raw=st.booleans())
def test_generated_metadata_gives_a_neuropod_error_or_runs(base: Path, config: Any, backend: Any, raw: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "pkg"  # legacy (no manifest): the reader must check every field itself
        (root / "0").mkdir(parents=True)
        os.link(base / "tree" / "test_data.npz", root / "test_data.npz")
        (root / "config.json").write_text(json.dumps({**INPUT_CONFIG, **config}) if not raw else json.dumps(config))
        (root / "0" / "config.json").write_text(json.dumps(backend))
        _exercise(root)


INPUT_CONFIG = {"name": "target", "platform": "placeholder", "input_spec": INPUTS, "output_spec": OUTPUTS}


# --- mutated zips -----------------------------------------------------------------------------------

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2**31), st.integers(0, 255)),
    st.tuples(st.just("zero_run"), st.integers(0, 2**31), st.integers(1, 64)),
)


def _mutate(data: bytes, mutations: Any) -> bytes:
    out = bytearray(data)
    for kind, position, value in mutations:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] ^= value
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value])
        else:
            out[at : at + value] = bytes(min(value, len(out) - at))
    return bytes(out)


@SETTINGS
@given(which=st.sampled_from(["stored.zip", "deflated.zip"]), mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_zips_give_a_neuropod_error_or_run(base: Path, which: str, mutations: Any) -> None:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / which
        path.write_bytes(_mutate((base / which).read_bytes(), mutations))
        _exercise(path)


@SETTINGS
@given(
    which=st.sampled_from(["stored.zip", "deflated.zip"]),
    entry=st.sampled_from(["config.json", "0/config.json", "manifest.json", "test_data.npz"]),
    mutations=st.lists(_mutation, min_size=1, max_size=3),
)
def test_zips_with_a_mutated_entry_and_a_matching_crc_give_a_neuropod_error_or_run(
    base: Path, which: str, entry: str, mutations: Any
) -> None:
    """Mutations past the zip layer: each entry rewritten whole, so the zip is valid and only its content lies."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / which
        with zipfile.ZipFile(base / which) as source, zipfile.ZipFile(path, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == entry:
                    data = _mutate(data, mutations)
                target.writestr(info, data)
        _exercise(path)


# --- zips written field by field ----------------------------------------------------------------

_part = st.sampled_from(["0", "data", "config.json", "manifest.json", "x", "..", ".", "", "\\", "a:b", "\x00"])
_entry = st.tuples(
    st.one_of(
        st.lists(_part, min_size=1, max_size=4).map(lambda parts: "/".join(parts).encode("utf-8")),
        st.binary(min_size=1, max_size=12),
    ),
    st.binary(max_size=64),
    st.fixed_dictionaries(
        {},
        optional={
            "method": st.sampled_from([0, 8, 12, 14, 99]),
            "flags": st.sampled_from([0, 0x1, 0x8, 0x800]),
            "size": st.integers(0, 2**32 - 1),
            "external_attr": st.sampled_from([0, 0o120777 << 16, 0o40755 << 16, 0o10644 << 16]),
        },
    ),
)


@SETTINGS
@given(extra=st.lists(_entry, min_size=1, max_size=4), keep_config=st.booleans())
def test_zips_with_generated_entries_give_a_neuropod_error_or_run(base: Path, extra: Any, keep_config: bool) -> None:
    from package_helpers import package_entries, raw_zip

    entries = [(n, d, {}) for n, d in package_entries(base / "tree").items() if keep_config or n != b"config.json"]
    with tempfile.TemporaryDirectory() as work:
        _exercise(raw_zip(Path(work) / "generated.zip", entries + list(extra)))


# --- trees with odd entries -------------------------------------------------------------------------

_odd = st.sampled_from(["fifo", "link_out", "link_in", "link_loop", "dir", "empty", "huge_sparse"])


@settings(SETTINGS, max_examples=max(50, EXAMPLES // 10))
@given(
    target=st.sampled_from(
        ["config.json", "manifest.json", "0/config.json", "test_data.npz", "0/data/x", "0/ops/op.so", "0/code"]
    ),
    odd=_odd,
    manifest=st.booleans(),
)
def test_odd_entries_give_a_neuropod_error_or_run(base: Path, target: str, odd: str, manifest: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(shutil.copytree(base / "tree", Path(work) / "pkg"))
        if not manifest:
            (root / "manifest.json").unlink()
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        if odd == "fifo":
            os.mkfifo(path)
        elif odd == "link_out":
            path.symlink_to("/dev/zero")
        elif odd == "link_in":
            path.symlink_to(root / "config.json" if target != "config.json" else root / "0" / "config.json")
        elif odd == "link_loop":
            path.symlink_to(path)
        elif odd == "dir":
            path.mkdir()
        elif odd == "empty":
            path.write_bytes(b"")
        else:
            with open(path, "wb") as f:
                f.truncate(1 << 40)  # a 1 TiB sparse file: never read whole
        _exercise(root)


def test_the_cache_holds_no_refused_package_after_the_properties(base: Path) -> None:
    """Run last in this module: a fuzz run leaves only packages that opened."""
    for which in ("stored.zip", "deflated.zip"):
        np.testing.assert_equal(open_package(base / which).config.name, "target")
    cache = Path(os.environ["NEUROPOD_CACHE_DIR"]) / "packages"
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
