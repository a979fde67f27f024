"""Issue 12 item 5: one parser for model URLs; load_neuropod, inspect, infer and test take the same forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require
from neuropod import load_neuropod
from neuropod.cli import main
from neuropod.errors import OptionError
from neuropod.packagers import create_placeholder_neuropod
from neuropod.urls import ModelURL, parse_model_url

X = np.arange(6, dtype=np.float32).reshape(2, 3)
INPUTS = [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ["batch", 2]}]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("grpc://h:81/m", ModelURL("grpc", "h", 81, "m")),
        ("grpcs://h/m/versions/2", ModelURL("grpcs", "h", 8001, "m", "2")),
        ("http://h:80/m", ModelURL("http", "h", 80, "m")),
        ("http://h:80/v2/models/m", ModelURL("http", "h", 80, "m")),
        ("https://h/v2/models/m/versions/7/", ModelURL("https", "h", 443, "m", "7")),
        ("grpc://h:1/v2/models/m", ModelURL("grpc", "h", 1, "m")),
    ],
)
def test_every_form_parses_the_same_way(url, expected):
    assert parse_model_url(url) == expected


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("s3://bucket/model.zip", "s3:// URLs are not supported"),
        ("gs://bucket/model", "gs:// URLs are not supported"),
        ("http://h:1/v2/models", "expected the path"),
        ("http://h:1/m?x=1", "no query"),
        ("grpc://:1/m", "no host"),
    ],
)
def test_bad_urls_are_refused_by_load_neuropod_naming_the_problem(url, fragment):
    with pytest.raises(OptionError, match=fragment.replace("?", r"\?")):
        load_neuropod(url)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    require("grpc")
    require("aiohttp")
    from neuropod.serving import ModelServer, ServerConfig

    root = tmp_path_factory.mktemp("served")
    package = create_placeholder_neuropod(root / "adder.zip", "adder", INPUTS, OUTPUTS, seed=3)
    with ModelServer.from_path(package, ServerConfig(grpc_port=0, http_port=0)) as server:
        yield package, server


def _forms(server):
    g, h = f"grpc://127.0.0.1:{server.grpc_port}", f"http://127.0.0.1:{server.http_port}"
    return [
        f"{g}/adder",
        f"{g}/adder/versions/1",
        f"{h}/adder",
        f"{h}/v2/models/adder",
        f"{h}/v2/models/adder/versions/1",
    ]


def test_load_neuropod_takes_every_form(served):
    package, server = served
    with load_neuropod(package) as local:
        expected = local.infer({"x": X})["out"]
    for url in _forms(server):
        with load_neuropod(url) as model:
            np.testing.assert_array_equal(model.infer({"x": X})["out"], expected, err_msg=url)


def test_the_commands_take_every_form(served, tmp_path):
    _, server = served
    np.save(tmp_path / "x.npy", X)
    runner = CliRunner()
    for url in _forms(server):
        shown = runner.invoke(main, ["inspect", url])
        assert shown.exit_code == 0, shown.output
        assert "name:      adder" in shown.output and "float32" in shown.output and "versions:  1" in shown.output
        as_json = json.loads(runner.invoke(main, ["inspect", "--json", url]).output)
        assert [t["name"] for t in as_json["input_spec"]] == ["x"] and as_json["output_spec"][0]["shape"] == [None, 2]
        ran = runner.invoke(main, ["infer", url, "-i", f"x={tmp_path / 'x.npy'}", "--json"])
        assert ran.exit_code == 0 and json.loads(ran.output)["out"]["shape"] == [2, 2], ran.output
        tested = runner.invoke(main, ["test", url])
        assert tested.exit_code == 2 and "carries no test data" in tested.output
