"""One planning step: where and how a model runs, decided once.

:func:`make_plan` takes a package (or a model URL), the options of
``load_neuropod`` and this process's surroundings (:class:`Host`), and returns
a :class:`Plan`: in this process, or in a worker pool (under which
interpreter, with which isolation), or on a server. ``load_neuropod``, the
model server, the Ray integration and the CLI all load through it
(:func:`neuropod.loader.load_planned` carries a plan out), so nothing below
asks again.

The options arrive as flat keywords (``load_neuropod``'s, kept as the
original's users call them) and are sorted here into one object per concern:

===================  ==========================================  =============================
object               what it holds                               applies to
===================  ==========================================  =============================
:class:`CallOptions`     what the ``Neuropod`` does on every call    every model
:class:`PackageOptions`  opening a package; where it runs            a package here
``TrustOptions``         the trust policy                            a package here
``BackendOptions``       what runs the model (device, threads)       a package here
``OpeOptions``           the worker pool                             a plan with workers
``IsolationOptions``     the limits of isolated workers              a sandbox or container
``RemoteOptions``        the client of a model server                a model URL
===================  ==========================================  =============================

An option given where its object does not apply is refused with the
object's reason (``APPLIES`` for a package here, ``REMOTE`` for a URL); one no
object declares is refused with the valid ones listed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

from ._original_options import apply_original_options
from .backends import BackendOptions, backend_option_table
from .errors import OptionError
from .isolation.options import ISOLATION_LEVELS, IsolationOptions
from .ope.options import OpeOptions
from .options import Options, check_rows, flag, one_of, optional_flag, optional_path, setting
from .package import Package, open_package
from .trust import TrustOptions, TrustPolicy, choose_isolation
from .urls import is_model_url, parse_model_url

if TYPE_CHECKING:
    from .envs.need import Need
    from .executors.remote import RemoteOptions

__all__ = [
    "Plan",
    "Host",
    "make_plan",
    "CallOptions",
    "PackageOptions",
    "IN_PROCESS",
    "WORKER_POOL",
    "REMOTE",
]

logger = logging.getLogger("neuropod")

IN_PROCESS = "in this process"
WORKER_POOL = "worker pool"
REMOTE = "remote"


@dataclass(frozen=True)
class CallOptions(Options):
    """What the ``Neuropod`` object does on every call, wherever the model runs."""

    validate: bool = setting(True, check=flag, doc="check inputs and outputs against the spec on every call")


def _environment(name: str, value: Any) -> Optional[str]:
    return "current" if value == "current" else optional_path(name, value)


@dataclass(frozen=True)
class PackageOptions(Options):
    """How a package on this machine is opened, and the choices the plan starts from."""

    REMOTE = "the server verifies its own packages and decides how its models run (neuropod serve and its settings)"

    use_ope: Optional[bool] = setting(
        None,
        check=optional_flag,
        doc="True: run the model in worker processes over shared memory; False: in this process (or an error); "
        "None: in this process unless the package needs another environment or isolation is asked for or required",
    )
    environment: Optional[str] = setting(
        None,
        check=_environment,
        doc="the Python environment that runs the model: 'current', an environment's path, or None to choose one",
    )
    isolation: Optional[str] = setting(
        None,
        check=one_of(None, *ISOLATION_LEVELS),
        doc="how the workers are isolated: " + ", ".join(map(repr, ISOLATION_LEVELS)) + "; None: what the trust "
        "policy requires (a worker at all only when something asks for one)",
    )
    verify_manifest: bool = setting(True, check=flag, doc="check every package file against its sha256 manifest")
    # The original's own keywords, accepted so that its users' calls run unchanged.
    load_custom_ops: bool = setting(
        True,
        check=flag,
        doc="load the package's custom ops (0/ops) before the model; False skips them in this process "
        "(a worker process loads them anyway, and says so once in the log)",
    )
    _always_use_native: bool = setting(
        True,
        check=flag,
        doc="the original's choice between its native and pure-Python executors; one implementation runs here "
        "whatever the value (said once in the log)",
    )


#: The objects of a package loaded here, in the order a name is looked up
#: (``timeout`` is the worker pool's here, the remote client's for a URL).
LOCAL_OPTIONS: Tuple[Type[Options], ...] = (
    CallOptions,
    PackageOptions,
    TrustOptions,
    BackendOptions,
    OpeOptions,
    IsolationOptions,
)


def _remote_options() -> Type[RemoteOptions]:
    from .executors.remote import RemoteOptions  # the remote client's module is imported when a URL needs it

    return RemoteOptions


@dataclass(frozen=True)
class Host:
    """What the plan reads of this process's surroundings (the interpreter's own packages are read by
    :mod:`neuropod.envs` when a package asks for something).

    Attributes:
        trust: the trust policy of ``NEUROPOD_TRUST`` ("" for none); the ``trust`` option overrides it.
        gpus: GPUs a scheduler gave this process (Ray sets ``CUDA_VISIBLE_DEVICES``
            to them): a model runs on the first (index 0) unless ``visible_gpu``
            says otherwise. Empty: on the CPU unless ``visible_gpu`` says otherwise.
    """

    trust: str = ""
    gpus: Tuple[Any, ...] = ()

    @classmethod
    def current(cls, gpus: Sequence[Any] = ()) -> Host:
        return cls(os.environ.get("NEUROPOD_TRUST", ""), tuple(gpus))


@dataclass(frozen=True)
class Plan:
    """Where one model runs and with what: :func:`make_plan` decides, :func:`~neuropod.loader.load_planned` does.

    Attributes:
        source: the package path or model URL, as given.
        runs: :data:`IN_PROCESS`, :data:`WORKER_POOL` or :data:`REMOTE`.
        call: what the ``Neuropod`` does on every call.
        package: the opened package (None for a remote model).
        backend: what runs the model (None for a remote model).
        pool: the worker pool (None unless ``runs`` is :data:`WORKER_POOL`).
        isolation: how far the workers are isolated (None without workers).
        environment_to_build: what an environment must hold that no
            environment here holds yet; it is built before the workers start
            (None: nothing to build; ``pool.python_executable`` is the interpreter).
        remote: the client's options (None for a package).
        reasons: why it runs where it runs, for logs and ``describe``.
    """

    source: str
    runs: str
    call: CallOptions
    package: Optional[Package] = None
    backend: Optional[BackendOptions] = None
    pool: Optional[OpeOptions] = None
    isolation: Optional[IsolationOptions] = None
    environment_to_build: Optional[Need] = None
    remote: Optional[RemoteOptions] = None
    reasons: Tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: where the model runs, and why."""
        if self.runs == REMOTE:
            return f"on the server at {self.source}"
        if self.pool is None or self.isolation is None:
            text = IN_PROCESS
        else:
            count = f"{self.pool.workers} worker{'s' if self.pool.workers != 1 else ''}"
            where = (
                f"an environment to build for {self.environment_to_build.describe()}"
                if self.environment_to_build is not None
                else self.pool.python_executable
            )
            text = f"{count} under {where}, isolation {self.isolation.describe()}"
        return text + (f" ({'; '.join(self.reasons)})" if self.reasons else "")

    def with_interpreter(self, python: str) -> Plan:
        """This plan with its workers under ``python`` (the environment built for it)."""
        assert self.pool is not None
        pool = dataclasses.replace(self.pool, python_executable=python)
        return dataclasses.replace(self, pool=pool, environment_to_build=None)


def make_plan(
    model: Union[str, os.PathLike[str]], options: Optional[Mapping[str, Any]] = None, host: Optional[Host] = None
) -> Plan:
    """Decide where and how ``model`` runs.

    Opens the package (checking its manifest unless ``verify_manifest=False``),
    finds the environment it needs (building none: see
    :attr:`Plan.environment_to_build`), applies the trust policy, and checks
    every option once.

    Args:
        model: a package directory or zip, or a model URL (see :mod:`neuropod.urls`).
        options: ``load_neuropod``'s keywords, as given.
        host: this process's surroundings; default :meth:`Host.current`.

    Raises:
        OptionError: an unknown option, one that does not apply to this way
            of running the model (with the reason), or a wrong value.
        TrustError: the trust policy forbids the isolation asked for.
    """
    given = dict(options or {})
    text = os.fspath(model)
    if is_model_url(text):  # a model server's URL (another scheme is refused by name)
        return _remote_plan(text, given)
    return _package_plan(text, given, host or Host.current())


def _refuse_misplaced(
    given: Mapping[str, Any],
    applying: Sequence[Type[Options]],
    elsewhere: Sequence[Type[Options]],
    extra_names: Sequence[str],
    where: str,
    remote: bool,
) -> None:
    """Refuse a name no applying object declares: with its owner's reason, or as unknown.

    For a package here, a name of the remote client's is refused with its
    reason too (its module is imported only then).
    """
    known = set(extra_names).union(*(cls.names() for cls in applying))
    for name in given:
        if name in known:
            continue
        owner = next((cls for cls in elsewhere if name in cls.names()), None)
        if owner is None and not remote and name in _remote_options().names():
            owner = _remote_options()
        if owner is not None and remote:
            raise OptionError(f"{where}: option {name!r} does not apply to a remote model: {owner.REMOTE}")
        if owner is not None:
            raise OptionError(f"{where}: option {name!r} does not apply here: {owner.APPLIES}")
        listed = sorted(n for n in known if not n.startswith("_"))  # the original's private keywords stay unlisted
        raise OptionError(f"{where}: unknown option {name!r}; valid options: {', '.join(listed)}")


def at_default(name: str, value: Any) -> bool:
    """Whether ``value`` is the declared default of option ``name`` of a package here (same type, equal)."""
    owner = next((cls for cls in LOCAL_OPTIONS if name in cls.names()), None)
    if owner is None:
        return False
    default = owner.default_of(name)
    return type(value) is type(default) and bool(value == default)


def _remote_plan(url: str, given: Dict[str, Any]) -> Plan:
    parse_model_url(url)  # an unsupported scheme or a malformed URL first, before any option
    remote_options = _remote_options()
    # A package option at its default (visible_gpu=None), or use_ope=False, says nothing the server could
    # disagree with.
    ours = CallOptions.names() | remote_options.names()
    given = {k: v for k, v in given.items() if k in ours or not (at_default(k, v) or (k == "use_ope" and v is False))}
    _refuse_misplaced(given, (CallOptions, remote_options), LOCAL_OPTIONS[1:], (), url, remote=True)
    return Plan(url, REMOTE, CallOptions.of(given, url), remote=remote_options.of(given, url))


def _package_plan(path: str, given: Dict[str, Any], host: Host) -> Plan:
    call = CallOptions.of(given, path)
    options = PackageOptions.of(given, path)
    policy = TrustOptions.of(given, path).trust
    if policy is None:
        try:
            policy = TrustPolicy.parse(host.trust, "NEUROPOD_TRUST")
        except OptionError as exc:
            raise OptionError(f"{path}: {exc}") from None
    in_process = options.use_ope is False  # asked for, not just the default
    if in_process and options.environment not in (None, "current"):
        raise OptionError(
            f"{path}: use_ope=False runs the model in this process, but environment={options.environment!r} "
            "runs it in a worker of that environment; drop one of them"
        )
    package = open_package(path, verify=options.verify_manifest)
    reasons: List[str] = []
    python, to_build = None, None
    if "python_executable" not in given:  # a caller who names the interpreter has chosen the environment
        python, to_build = _interpreter(package, "current" if in_process else options.environment)
        if python is not None or to_build is not None:
            reasons.append("this process does not satisfy the package")
    # The trust policy may require (or, with isolation=None, choose) a sandbox or container.
    level, decision = choose_isolation(package, options.isolation, policy, options.verify_manifest)
    worker_needed = options.isolation is not None or level != "process"  # isolation="process": a worker too
    if worker_needed and in_process:
        why = "was asked for" if options.isolation is not None else "is required by the trust policy"
        raise OptionError(
            f"{path}: use_ope=False runs the model in this process, but isolation={level!r} {why}, "
            "which runs it in a worker; drop use_ope=False"
        )
    if options.isolation is None and level != "process":
        reasons.append(f"isolation={level!r}: the package {decision.reason}")
    pooled = bool(options.use_ope) or worker_needed or python is not None or to_build is not None
    applying: List[Type[Options]] = [CallOptions, PackageOptions, TrustOptions, BackendOptions]
    applying += [OpeOptions] if pooled else []
    applying += [IsolationOptions] if level != "process" else []
    elsewhere = [cls for cls in LOCAL_OPTIONS if cls not in applying]
    backend_rows = backend_option_table(package.config.platform)
    _refuse_misplaced(given, applying, elsewhere, [r.name for r in backend_rows], path, remote=False)
    backend_given = dict(given)
    if "visible_gpu" not in given and host.gpus:
        backend_given["visible_gpu"] = 0  # the first of the GPUs this process was given
    backend = BackendOptions.of(backend_given, path, extra=check_rows(given, backend_rows, path))
    original: Dict[str, Any] = {
        name: getattr(options, name) for name in ("_always_use_native", "load_custom_ops") if name in given
    }
    package = apply_original_options(package, original, pooled)
    if not pooled:
        return Plan(path, IN_PROCESS, call, package, backend, reasons=tuple(reasons))
    pool = OpeOptions.of({**given, "python_executable": python} if python else given, path)
    isolation = IsolationOptions.of(given, path, level=level)
    return Plan(path, WORKER_POOL, call, package, backend, pool, isolation, to_build, reasons=tuple(reasons))


def _interpreter(package: Package, environment: Optional[str]) -> Tuple[Optional[str], Optional[Need]]:
    """``(interpreter, None)`` of the workers, ``(None, need)`` when an environment must be built first,
    or ``(None, None)`` to load the package in this process.

    ``environment``: None (choose), ``"current"`` (this process or an error), or a path (that one).
    """
    from .envs import _may_need_another, environment_for

    if environment is not None or not _may_need_another(package):
        return environment_for(package, environment), None
    from .envs.need import need_of
    from .envs.select import find_environment

    need = need_of(package)
    if need.asks_for_anything and need.problems_here() and find_environment(need) is None:
        return None, need
    return environment_for(package, None), None
