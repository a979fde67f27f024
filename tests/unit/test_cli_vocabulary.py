"""One vocabulary across the CLI and the API (issue 26 item 4).

One spelling per concept in every command's help (``--use-ope``,
``--batch-size``, ``PATH`` for a model); sizes and durations read by one
parser, a bare number meaning the same everywhere; one "is this a model URL"
test; one byte formatter; remote and local ``inspect`` print the same specs.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import click
import pytest
from click.testing import CliRunner

from conftest import require
from neuropod import units
from neuropod.cli import main
from neuropod.errors import OptionError
from neuropod.package import open_package
from neuropod.packagers import create_placeholder_neuropod
from neuropod.urls import is_model_url, model_location

SRC = Path(__file__).resolve().parents[2] / "src" / "neuropod"
INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", None, 4]}]
OUTPUTS = [{"name": "y", "dtype": "int64", "shape": ["batch"]}]


def _commands(
    group: click.Group = main, prefix: Tuple[str, ...] = ()
) -> Iterator[Tuple[Tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def _help(path: Tuple[str, ...]) -> str:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


# -- one spelling per concept ------------------------------------------------------------------


def test_every_command_help_uses_the_one_spelling() -> None:
    seen_use_ope = []
    for path, command in _commands():
        text = _help(path)
        visible = {opt for param in command.params if not getattr(param, "hidden", False) for opt in param.opts}
        assert "--ope" not in visible and "--batch" not in visible, (path, visible)
        assert not re.search(r"--ope\b|--batch\b(?!-)", text), (path, text)
        usage = text.splitlines()[0]
        assert not re.search(r"\b(PACKAGE|PACKAGES|MODEL|MODELS)\b", usage), usage
        if "--use-ope" in visible:
            seen_use_ope.append(path)
    # Every command that can run a model out of process says so with the same flag.
    assert {("infer",), ("evaluate",), ("serve",), ("bench",)} <= set(seen_use_ope)


@pytest.mark.parametrize(
    "command", [("inspect",), ("infer",), ("test",), ("serve",), ("check",), ("evaluate",), ("bench",), ("sign",)]
)
def test_the_model_argument_is_path_in_every_command(command: Tuple[str, ...]) -> None:
    assert _help(command).splitlines()[0].endswith(" PATH")


def test_compare_takes_paths() -> None:
    assert _help(("compare",)).splitlines()[0].endswith(" PATH...")


def _runner_with_stderr_apart() -> CliRunner:
    """click 8.2 always captures stderr apart; click 8.1 (the newest for Python 3.9) needs mix_stderr=False."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def test_the_old_spellings_still_work_as_hidden_aliases(tmp_path: Path) -> None:
    package = create_placeholder_neuropod(tmp_path / "m", "m", INPUTS, OUTPUTS, package_as_zip=False)
    old = _runner_with_stderr_apart().invoke(
        main,
        ["bench", str(package), "--batch", "3", "--duration", "0.05", "--warmup", "0", "--dim", "batch=3", "--json"],
    )
    assert old.exit_code == 0, old.output
    assert "--batch is deprecated" in old.stderr
    assert [row["batch_size"] for row in json.loads(old.stdout)] == [3]
    # serve --ope is taken (not "no such option"); the missing repository then ends it before any port.
    serve_argv = ["serve", str(tmp_path / "nothing-here"), "--ope", "--grpc-port", "0"]
    served = _runner_with_stderr_apart().invoke(main, serve_argv)
    assert "No such option" not in served.output
    assert "--ope is deprecated" in served.stderr and served.exit_code == 2, served.output


# -- durations and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("30d", 2592000.0), ("2w", 1209600.0)],
)
def test_durations_take_units_and_a_bare_number_is_seconds(text: str, seconds: float) -> None:
    assert units.parse_duration("--older-than", text) == seconds


@pytest.mark.parametrize(
    "text, size",
    [("4096", 4096), ("1GiB", 1 << 30), ("1G", 1 << 30), ("1gb", 1 << 30), ("512MB", 512 << 20), ("64k", 64 << 10)],
)
def test_sizes_take_units_and_a_bare_number_is_bytes(text: str, size: int) -> None:
    assert units.parse_bytes("--max-size", text) == size


def test_bad_sizes_and_durations_name_the_option() -> None:
    with pytest.raises(OptionError, match=r"--older-than: expected a duration .*'soon'"):
        units.parse_duration("--older-than", "soon")
    with pytest.raises(OptionError, match=r"option 'memory_limit': expected bytes .*'lots'"):
        from neuropod.isolation.options import parse_bytes

        parse_bytes("memory_limit", "lots")


def test_memory_limit_and_cache_max_size_read_sizes_alike() -> None:
    from neuropod.isolation.options import parse_bytes

    assert parse_bytes("memory_limit", "2GiB") == units.parse_bytes("--max-size", "2G") == 2 << 30


@pytest.fixture
def aged_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tuple[Path, Path]:
    """One extracted zip and one built environment, both last used a minute ago."""
    monkeypatch.setenv("NEUROPOD_ENVS_DIR", str(tmp_path / "envs"))
    monkeypatch.setenv("NEUROPOD_CACHE_DIR", str(tmp_path / "cache"))
    entry = open_package(create_placeholder_neuropod(tmp_path / "m.zip", "m", INPUTS, OUTPUTS)).root
    env = tmp_path / "envs" / "abc123"
    (env / "bin").mkdir(parents=True)
    (env / "neuropod-env.json").write_text(json.dumps({"python": "3.11.7", "packages": {"numpy": "2.0"}}))
    minute_ago = time.time() - 60
    for path in (entry, env / "neuropod-env.json"):
        os.utime(path, (minute_ago, minute_ago))
    return entry, env


def test_older_than_means_the_same_for_both_prunes(aged_caches: Tuple[Path, Path]) -> None:
    entry, env = aged_caches
    runner = CliRunner()
    for args in (
        ["cache", "prune", "--older-than", "1h", "--kind", "packages"],
        ["envs", "prune", "--older-than", "1h"],
    ):
        assert runner.invoke(main, args).exit_code == 0
    assert entry.exists() and env.exists()  # a minute is not an hour, for either
    # A bare 30: thirty seconds for both (it was 30 days for envs, 30 seconds for the cache).
    for args in (
        ["cache", "prune", "--older-than", "30", "--kind", "packages"],
        ["envs", "prune", "--older-than", "30"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    assert not entry.exists() and not env.exists()


def test_cache_prune_max_size_takes_units(aged_caches: Tuple[Path, Path]) -> None:
    entry, _ = aged_caches
    for size in ("1G", "1GiB", "512MB"):
        result = CliRunner().invoke(main, ["cache", "prune", "--max-size", size, "--kind", "packages"])
        assert result.exit_code == 0, result.output
        assert "removed 0 entries" in result.output and entry.exists()
    result = CliRunner().invoke(main, ["cache", "prune", "--max-size", "lots"])
    assert result.exit_code == 2 and "--max-size: expected bytes" in result.output and "Traceback" not in result.output


def test_the_cache_size_variable_takes_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROPOD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NEUROPOD_CACHE_MAX_BYTES", "1KiB")  # smaller than any extraction: only the new one stays
    first = open_package(create_placeholder_neuropod(tmp_path / "a.zip", "a", INPUTS, OUTPUTS)).root
    second = open_package(create_placeholder_neuropod(tmp_path / "b.zip", "b", INPUTS, OUTPUTS)).root
    assert second.exists() and not first.exists()


# -- one formatter, one URL test -----------------------------------------------------------------


def test_one_byte_formatter() -> None:
    from neuropod.isolation.options import format_bytes as isolation_format

    assert isolation_format is units.format_bytes
    assert [units.format_bytes(n) for n in (0, 512, 768 << 20, 1536, 3 << 30, (40 << 20) + 100)] == [
        "0 B",
        "512 B",
        "768 MiB",
        "1.5 KiB",
        "3 GiB",
        "40.0 MiB",
    ]


def test_one_url_test() -> None:
    assert is_model_url("grpc://h:1/m") and is_model_url("s3://bucket/model") and is_model_url("HTTP://h/m")
    assert not is_model_url("model.zip") and not is_model_url("/srv/models/m") and not is_model_url(Path("m"))
    assert not is_model_url(Path("http://h/m"))  # a Path folds the slashes: it names the file http:/h/m
    assert model_location("grpc://h:1/m") == "grpc://h:1/m" and model_location("m") == os.path.abspath("m")
    # No other place decides it by a rule of its own.
    rules = re.compile(r"startswith\(REMOTE_SCHEMES\)|[\"']://[\"'] (not )?in |\bis_url\(")
    places: List[str] = [
        str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if rules.search(path.read_text(encoding="utf-8"))
    ]
    assert places == [], places


def test_a_url_of_another_scheme_is_refused_by_name_in_bench() -> None:
    # Before, bench took s3://... for a package path and failed to find the file.
    result = CliRunner().invoke(main, ["bench", "s3://bucket/model", "--duration", "0.1"])
    assert result.exit_code == 2 and "s3:// URLs are not supported" in result.output, result.output


# -- inspect ----------------------------------------------------------------------------------------


def _section(text: str, title: str) -> List[str]:
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    return [line for line in lines[start:] if line.startswith("    ")][: len(INPUTS if title == "inputs" else OUTPUTS)]


def test_remote_and_local_inspect_print_the_same_spec_form(tmp_path: Path) -> None:
    require("aiohttp")
    from neuropod.serving import ModelServer, ServerConfig

    package = create_placeholder_neuropod(tmp_path / "m", "m", INPUTS, OUTPUTS, package_as_zip=False)
    runner = CliRunner()
    local = runner.invoke(main, ["inspect", str(package)])
    assert local.exit_code == 0, local.output
    with ModelServer.from_path(package, ServerConfig(grpc_port=None, http_port=0)) as server:
        url = f"http://127.0.0.1:{server.http_port}/m"
        remote = runner.invoke(main, ["inspect", url])
        remote_json = json.loads(runner.invoke(main, ["inspect", url, "--json"]).output)
    assert remote.exit_code == 0, remote.output
    local_json = json.loads(runner.invoke(main, ["inspect", str(package), "--json"]).output)
    for title in ("inputs", "outputs"):
        # The protocol carries no symbols: the server's sizes arrive as None, in the same form.
        expected = [line.replace("'batch'", "None") for line in _section(local.output, title)]
        assert _section(remote.output, title) == expected, remote.output
    assert "FP32" not in remote.output and "-1" not in remote.output
    assert "float32   [None, None, 4]" in remote.output and "float32   ['batch', None, 4]" in local.output
    for key in ("input_spec", "output_spec"):
        assert [(s["name"], s["dtype"]) for s in remote_json[key]] == [(s["name"], s["dtype"]) for s in local_json[key]]
    assert remote_json["input_spec"][0]["shape"] == [None, None, 4]
