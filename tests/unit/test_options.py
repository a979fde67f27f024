"""Each option declared once (a field of its concern's class), and one planning step (neuropod.plan)."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from dataclasses import dataclass
from typing import Optional

import pytest

from neuropod import OptionError, load_neuropod
from neuropod.backends import BackendOptions
from neuropod.executors.remote import RemoteOptions
from neuropod.isolation.options import ISOLATION_LEVELS, ISOLATION_OPTIONS, IsolationOptions
from neuropod.ope.options import OPE_OPTIONS, OpeOptions
from neuropod.options import Options, optional_positive_int, setting
from neuropod.packagers import create_placeholder_neuropod
from neuropod.plan import IN_PROCESS, LOCAL_OPTIONS, REMOTE, WORKER_POOL, Host, PackageOptions, make_plan
from neuropod.serving.repository import ModelSettings
from neuropod.trust import LEVEL_RANK

INPUTS = [{"name": "x", "dtype": "float32", "shape": ("batch", 2)}]
OUTPUTS = [{"name": "out", "dtype": "float32", "shape": ("batch", 2)}]


@pytest.fixture
def package(tmp_path):
    return str(create_placeholder_neuropod(tmp_path / "m.zip", "m", INPUTS, OUTPUTS))


# --- declared once ---------------------------------------------------------------------------


def test_no_option_is_declared_by_two_local_objects():
    seen = {}
    for cls in LOCAL_OPTIONS:
        for name in cls.names():
            assert name not in seen, f"{name} is declared by {seen.get(name)} and {cls.__name__}"
            seen[name] = cls.__name__
    # The remote client shares one name with the worker pool, with one meaning: seconds one call may
    # take, None for no limit (the defaults differ: 60 s remotely, none for a worker).
    assert RemoteOptions.names() & set(seen) == {"timeout"}
    assert OpeOptions(timeout=None).timeout is None and RemoteOptions(timeout=None).timeout is None
    assert OpeOptions(timeout=2).timeout == RemoteOptions(timeout=2).timeout == 2.0


def test_the_tables_are_the_fields():
    assert [row.name for row in OPE_OPTIONS] == [f.name for f in dataclasses.fields(OpeOptions)]
    assert [row.name for row in ISOLATION_OPTIONS] == [f.name for f in dataclasses.fields(IsolationOptions)][1:]
    assert OpeOptions.default_of("workers") == OpeOptions().workers == 1
    assert OpeOptions.table()[5].shown == "this interpreter"  # python_executable, whatever machine documents it


def test_use_ope_has_one_default_everywhere():
    # Before: None in load_neuropod's signature, False in the option table, False in ModelSettings.
    assert PackageOptions.default_of("use_ope") is None
    assert inspect.signature(load_neuropod).parameters["use_ope"].default is None
    assert ModelSettings().use_ope is None


def test_load_neuropods_keywords_default_to_the_declared_defaults():
    for name, parameter in inspect.signature(load_neuropod).parameters.items():
        if parameter.default is inspect.Parameter.empty:
            continue
        owner = next(cls for cls in LOCAL_OPTIONS if name in cls.names())
        assert owner.default_of(name) == parameter.default, name


def test_isolation_levels_are_written_once():
    assert tuple(LEVEL_RANK) == ISOLATION_LEVELS
    with pytest.raises(
        OptionError, match="option 'isolation': expected one of None, 'process', 'sandbox', 'container'"
    ):
        PackageOptions(isolation="vm")


def test_an_object_checks_its_fields_when_built_and_keeps_what_the_check_returns():
    with pytest.raises(OptionError, match="option 'workers': expected a positive int, got 0"):
        OpeOptions(workers=0)
    with pytest.raises(OptionError, match="option 'visible_gpu': expected None or a non-negative int, got -1"):
        BackendOptions(visible_gpu=-1)
    options = OpeOptions(cpu_affinity=[0], worker_env={"A": "1"}, pass_env=None, spin_us=5)
    assert options.cpu_affinity == ((0,),) and options.worker_env == (("A", "1"),) and options.pass_env == ()
    assert options.spin_us == 5.0 and dataclasses.replace(options) == options  # checks accept what they return
    assert dataclasses.replace(IsolationOptions(level="sandbox", memory_limit="1GiB")).memory_limit == 1 << 30


def test_adding_an_option_is_one_field_in_one_class():
    @dataclass(frozen=True)
    class Example(Options):
        APPLIES = "it is an example"

        retries: Optional[int] = setting(None, check=optional_positive_int, doc="times a call is tried again")

    (row,) = Example.table()
    assert (row.name, row.default, row.doc) == ("retries", None, "times a call is tried again")
    assert Example.of({"retries": 3, "other": 1}).retries == 3
    with pytest.raises(OptionError, match="model.zip: option 'retries': expected None or a positive int, got 0"):
        Example.of({"retries": 0}, "model.zip")


# --- the messages ----------------------------------------------------------------------------


def test_a_bad_trust_value_names_the_package(package):
    # Before: the policy was parsed before the options were checked, and the message lost the path.
    with pytest.raises(OptionError, match=r"m\.zip: option 'trust': code must be one of process, sandbox"):
        load_neuropod(package, trust="code=vm")


def test_a_bad_neuropod_trust_names_the_package(package, monkeypatch):
    monkeypatch.setenv("NEUROPOD_TRUST", "code=vm")
    with pytest.raises(OptionError, match=r"m\.zip: NEUROPOD_TRUST: code must be one of"):
        load_neuropod(package)


def test_an_option_of_the_remote_client_on_a_package_says_so(package):
    with pytest.raises(OptionError, match="option 'token' does not apply here: it is an option of a model on a server"):
        load_neuropod(package, token="secret")


def test_an_isolation_option_without_isolation_says_so(package):
    with pytest.raises(OptionError, match="'memory_limit' does not apply here: it applies to isolated workers"):
        load_neuropod(package, use_ope=True, memory_limit="1GiB")


@pytest.mark.parametrize(
    "option, owner_reason",
    [
        ({"workers": 2}, "it is an option of out-of-process workers"),  # before: "unknown option 'workers'"
        ({"visible_gpu": 0}, "the server chooses the device"),
        ({"memory_limit": 1 << 30}, "it applies to isolated workers"),
        ({"environment": "current"}, "the server verifies its own packages and decides how its models run"),
    ],
)
def test_a_local_option_on_a_url_is_refused_with_its_owners_reason(option, owner_reason):
    # Planning a URL connects to nothing: the options are refused first.
    with pytest.raises(OptionError, match=f"does not apply to a remote model: {owner_reason}"):
        make_plan("grpc://127.0.0.1:1/model", option)


def test_a_url_plan_takes_the_clients_options_and_local_defaults():
    plan = make_plan("http://127.0.0.1:1/model", {"timeout": None, "visible_gpu": None, "use_ope": False})
    assert plan.runs == REMOTE and plan.remote is not None and plan.remote.timeout is None
    assert plan.package is None and plan.pool is None
    assert make_plan("grpc://127.0.0.1:1/model").remote.timeout == 60.0


# --- the plan --------------------------------------------------------------------------------


def test_a_plain_package_runs_in_this_process(package):
    plan = make_plan(package, {}, Host())
    assert plan.runs == IN_PROCESS and plan.pool is None and plan.isolation is None
    assert plan.backend.visible_gpu is None and plan.describe() == IN_PROCESS


def test_workers_get_a_pool_and_their_options(package):
    plan = make_plan(package, {"use_ope": True, "workers": 3, "timeout": 5}, Host())
    assert plan.runs == WORKER_POOL and plan.pool.workers == 3 and plan.pool.timeout == 5.0
    assert plan.pool.python_executable == sys.executable and plan.isolation.level == "process"
    assert plan.describe().startswith(f"3 workers under {sys.executable}, isolation process")


def test_isolation_asked_for_means_a_pool(package):
    plan = make_plan(package, {"isolation": "process"}, Host())
    assert plan.runs == WORKER_POOL


def test_the_trust_policy_of_the_host_chooses_the_isolation(package):
    plan = make_plan(package, {"max_processes": 64}, Host(trust="unsigned=sandbox"))
    assert plan.runs == WORKER_POOL and plan.isolation.level == "sandbox" and plan.isolation.max_processes == 64
    assert "is not signed by a trusted key" in plan.describe()
    # The trust option overrides the host's.
    assert make_plan(package, {"trust": "unsigned=process"}, Host(trust="unsigned=sandbox")).runs == IN_PROCESS


def test_the_gpus_a_scheduler_gave_this_process_are_the_default_device(package):
    # Before: the Ray integration decided this itself, twice.
    assert make_plan(package, {}, Host(gpus=(3,))).backend.visible_gpu == 0
    assert make_plan(package, {"visible_gpu": None}, Host(gpus=(3,))).backend.visible_gpu is None
    assert make_plan(package, {}, Host()).backend.visible_gpu is None


def test_load_neuropod_carries_out_the_plan(package):
    import numpy as np

    with load_neuropod(package, use_ope=True, workers=2) as model:
        assert type(model.executor).__name__ == "OutOfProcessExecutor" and len(model.executor.workers) == 2
        assert model.infer({"x": np.zeros((1, 2), np.float32)})["out"].shape == (1, 2)


# --- the server's settings -------------------------------------------------------------------


def test_model_settings_are_checked_and_give_load_keywords():
    with pytest.raises(OptionError, match="option 'max_batch_size': expected a non-negative int, got -1"):
        ModelSettings(max_batch_size=-1)
    with pytest.raises(OptionError, match="unknown setting.s. batch; expected isolation, load_options, max_batch"):
        ModelSettings.from_dict({"batch": 1})
    settings = ModelSettings.from_dict({"use_ope": True, "load_options": {"workers": 2}})
    assert settings.load_keywords() == {"use_ope": True, "workers": 2}
    assert ModelSettings().load_keywords() == {}
    with pytest.raises(OptionError, match="use_ope=True and load_options use_ope=False; set it once"):
        ModelSettings(use_ope=True, load_options={"use_ope": False}).load_keywords()
