"""The model repository: which packages a server serves, loaded and ready.

A server serves either one package (named by its config) or a repository
directory in which each entry is a model named after the entry:

    repo/
      adder/                 a package directory (version "1")
      tagger.zip             a zipped package, named without .zip (version "1")
      ranker/1/ ranker/2/    numbered version folders, each a package

Each model runs in-process or in out-of-process workers, per its
:class:`ModelSettings`.
"""

from __future__ import annotations

import logging
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..errors import ModelNotFoundError, ModelNotReadyError, OptionError, PackageError
from ..loader import Neuropod
from ..options import Options, number, setting
from ..package import layout, open_package
from ..plan import PackageOptions, make_plan
from .deferred import load_for_serving
from .statistics import ModelStatistics

__all__ = ["ModelSettings", "ServedModel", "ModelRepository", "ModelIndexEntry", "find_packages", "DEFAULT_VERSION"]

logger = logging.getLogger("neuropod.serving")

TensorDict = Dict[str, np.ndarray]

#: The version of a model that has no numbered version folders.
DEFAULT_VERSION = "1"


def _load_options(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise OptionError(f"option {name!r}: expected a dict of load_neuropod keyword -> value, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelSettings(Options):
    """How one model is run by the server (each field is a setting of the server's config file).

    ``use_ope`` and ``isolation`` are ``load_neuropod``'s options of the same
    names (declared there once, :class:`neuropod.plan.PackageOptions`), kept
    here as settings of their own; the model's plan is made from them and
    ``load_options`` (:meth:`load_keywords`). Limits of isolated workers go in
    ``load_options``.
    """

    use_ope: Optional[bool] = PackageOptions.field_like("use_ope")
    max_batch_size: int = setting(
        0,
        check=number("a non-negative int", 0, integer=True),
        doc="merge concurrent requests into calls of up to this many rows (0: no dynamic batching); needs a "
        "model whose inputs and outputs all start with one batch symbol",
    )
    max_queue_delay_ms: float = setting(
        2.0,
        check=number("a non-negative number", 0, integer=False),
        doc="how long the first request of a batch waits for others to join it",
    )
    load_options: Mapping[str, Any] = setting(
        check=_load_options, factory=dict, doc="more keyword arguments for load_neuropod"
    )
    isolation: Optional[str] = PackageOptions.field_like("isolation")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model settings") -> ModelSettings:
        """Build from a JSON object; unknown keys are refused by name."""
        known = cls.names()
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"{where}: unknown setting(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        return cls.of(data, where)

    def load_keywords(self) -> Dict[str, Any]:
        """The ``load_neuropod`` keywords these settings give (the model's plan is made from them).

        Raises:
            OptionError: ``use_ope`` or ``isolation`` set both here and in ``load_options``.
        """
        keywords = dict(self.load_options)
        for name in ("use_ope", "isolation"):
            value = getattr(self, name)
            if value is None:
                continue
            if name in keywords and keywords[name] != value:
                raise OptionError(
                    f"model settings: {name}={value!r} and load_options {name}={keywords[name]!r}; set it once"
                )
            keywords[name] = value
        return keywords


def _batch_symbol(neuropod: Neuropod) -> Optional[str]:
    """The symbol every input and output starts with, or None if there is none."""
    specs = list(neuropod.problem.inputs) + list(neuropod.problem.outputs)
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, str):
            return first
    return None


class ServedModel:
    """One version of one model, loaded.

    Args:
        name: the name clients use.
        version: the version string clients use.
        neuropod: the loaded model (the server owns it and closes it).
        settings: how it is run.
    """

    def __init__(self, name: str, version: str, neuropod: Neuropod, settings: Optional[ModelSettings] = None) -> None:
        self.name = name
        self.version = version
        self.neuropod = neuropod
        self.settings = settings or ModelSettings()
        self.output_names = tuple(spec.name for spec in neuropod.problem.outputs)
        self.batch_symbol = _batch_symbol(neuropod)
        if self.settings.max_batch_size and self.batch_symbol is None:
            shapes = ", ".join(f"{s.name} {list(s.shape)}" for s in neuropod.problem.inputs + neuropod.problem.outputs)
            raise OptionError(
                f"model {name!r}: dynamic batching needs every input and output to start with the same "
                f"batch symbol; its specs are: {shapes}"
            )
        self._closed = False
        self._lock = threading.Lock()
        #: Moving average of the model's call time (None before the first call).
        self.mean_call_s: Optional[float] = None
        #: Duration of the latest call, in nanoseconds.
        self.last_call_ns = 0
        self.statistics = ModelStatistics()
        self._users = 0
        self._retired = False
        self._on_close: List[Callable[[], None]] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def platform(self) -> str:
        return self.neuropod.platform

    def ready(self) -> bool:
        """Loaded, not closed, and its executor can take a call now."""
        if self._closed:
            return False
        return self.neuropod.executor.ready()

    def check_ready(self) -> None:
        if not self.ready():
            raise ModelNotReadyError(f"model {self.name!r} version {self.version} is not ready")

    def check(self, inputs: Mapping[str, np.ndarray]) -> Tuple[TensorDict, Optional[Dict[str, int]]]:
        """A request's inputs checked against the spec, and the symbol sizes they bind (once per request)."""
        return self.neuropod._check_inputs(inputs)

    def run(self, inputs: TensorDict, bindings: Optional[Dict[str, int]]) -> TensorDict:
        """Run checked inputs (blocking); outputs are checked against ``bindings``. Updates :attr:`mean_call_s`."""
        started = time.perf_counter_ns()
        outputs = self.neuropod._run_checked(inputs, bindings)
        elapsed_ns = time.perf_counter_ns() - started
        self.last_call_ns = elapsed_ns
        rows = next(iter(inputs.values())).shape[0] if inputs and self.batch_symbol else 1
        self.statistics.executed(int(rows), elapsed_ns)
        elapsed = elapsed_ns / 1e9
        mean = self.mean_call_s
        # A moving average: a model whose calls slow down (bigger inputs) is noticed within a dozen
        # calls. Each call counts for at most 4x the average, so one call that lost the CPU to
        # another process moves it by 60% at most instead of sending the next calls to a thread.
        self.mean_call_s = elapsed if mean is None else 0.8 * mean + 0.2 * min(elapsed, 4 * mean)
        return outputs

    def run_batch(self, inputs: TensorDict) -> TensorDict:
        """Run the checked requests of a batch, merged along the batch symbol (see :mod:`.batching`)."""
        rows = next(iter(inputs.values())).shape[0]
        # Each request was checked alone; the merged call's outputs must span all their rows.
        return self.run(inputs, {self.batch_symbol: rows} if self.batch_symbol else None)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> TensorDict:
        """Check and run one request (blocking)."""
        checked, bindings = self.check(inputs)
        return self.run(checked, bindings)

    def acquire(self) -> None:
        """A request starts using the model (see :meth:`retire`)."""
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self.close()

    def retire(self) -> None:
        """Close once the requests using the model now have finished (it was unloaded or replaced)."""
        with self._lock:
            self._retired = True
            idle = self._users == 0
        if idle:
            self.close()

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for callback in self._on_close:
            callback()
        self.neuropod.close()


def _is_package(path: Path) -> bool:
    """A package directory, or a zip (packagers write zips with or without the suffix).

    A ``.zip`` file counts even when it is not a valid zip: loading it then reports why.
    """
    if path.is_dir():
        return (path / layout.CONFIG).is_file()
    return path.is_file() and (path.suffix == ".zip" or zipfile.is_zipfile(path))


def find_packages(path: Union[str, Path]) -> List[Tuple[Optional[str], str, Path]]:
    """``(model name, version, package path)`` for each package under ``path``.

    The name is None for a single package (its config names it).

    Raises:
        PackageError: ``path`` is neither a package nor a directory holding any.
    """
    root = Path(path)
    if not root.exists():
        raise PackageError(f"{root}: no such package or model repository")
    if _is_package(root):
        return [(None, DEFAULT_VERSION, root)]
    if not root.is_dir():
        raise PackageError(f"{root}: not a neuropod package (a directory with config.json, or a .zip)")
    found: List[Tuple[Optional[str], str, Path]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if _is_package(entry):
            found.append((entry.name[:-4] if entry.name.endswith(".zip") else entry.name, DEFAULT_VERSION, entry))
            continue
        if entry.is_dir():
            versions = [child for child in entry.iterdir() if child.name.isdigit() and _is_package(child)]
            for child in sorted(versions, key=lambda c: int(c.name)):
                found.append((entry.name, str(int(child.name)), child))
            if not versions:
                logger.warning("skipping %s: neither a package nor a folder of numbered versions", entry)
    if not found:
        raise PackageError(f"{root}: holds no neuropod packages (expected <model>/ or <model>/<version>/ packages)")
    return found


@dataclass(frozen=True)
class ModelIndexEntry:
    """One row of the repository index: a model version and its state (``READY``, ``LOADING``, ``UNAVAILABLE``)."""

    name: str
    version: str
    state: str
    reason: str = ""


def _fingerprint(path: Path) -> Tuple[Tuple[str, int, int], ...]:
    """What changes when a package on disk is replaced or edited: every file's path, size and mtime."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    found = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        found.append((str(file.relative_to(path)) if file != path else file.name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


class ModelRepository:
    """The models a server serves, by name and version.

    Built with a ``root`` (a package or a repository directory), it also
    controls them: :meth:`load`, :meth:`unload`, :meth:`load_all` and
    :meth:`poll` read the directory again. A model being replaced serves its
    old version until the new one has loaded; a model unloaded or replaced
    closes once the requests using it have finished.

    The repository owns the models: :meth:`close` closes them all.

    Args:
        root: where the packages are; None for a repository filled with :meth:`add`.
        default_settings: settings for models not named in ``model_settings``.
        model_settings: per-model settings, by model name.
    """

    def __init__(
        self,
        root: Union[str, Path, None] = None,
        default_settings: Optional[ModelSettings] = None,
        model_settings: Optional[Mapping[str, ModelSettings]] = None,
    ) -> None:
        self._models: Dict[str, Dict[str, ServedModel]] = {}
        self.root = Path(root) if root is not None else None
        self._defaults = default_settings or ModelSettings()
        self._model_settings = dict(model_settings or {})
        self._unserved: Dict[str, Tuple[str, str]] = {}  # name -> (state, reason) of a model not serving
        self._seen: Dict[str, Tuple[Any, ...]] = {}  # name -> fingerprint of what was last loaded (or tried)
        self._control = threading.Lock()
        #: True while :meth:`load_all` runs (the server is not ready meanwhile).
        self.loading = False
        self._closed = False

    @classmethod
    def from_path(
        cls,
        path: Union[str, Path],
        default_settings: Optional[ModelSettings] = None,
        model_settings: Optional[Mapping[str, ModelSettings]] = None,
        strict: bool = True,
    ) -> ModelRepository:
        """Load every package of a package path or repository directory.

        Args:
            path: one package, or a repository directory (see the module doc).
            default_settings: settings for models not named in ``model_settings``.
            model_settings: per-model settings, by model name.
            strict: a package that fails to load fails the whole repository;
                otherwise it is logged (path and reason) and the others serve.
        """
        repository = cls(path, default_settings, model_settings)
        try:
            repository.load_all(strict=strict)
        except BaseException:
            repository.close()
            raise
        return repository

    # -- control -----------------------------------------------------------------

    def scan(self) -> Dict[str, List[Tuple[str, Path]]]:
        """Model name -> ``(version, package path)`` of what the root holds now."""
        if self.root is None:
            raise OptionError("this server was given no repository directory to load models from")
        found: Dict[str, List[Tuple[str, Path]]] = {}
        for name, version, package_path in find_packages(self.root):
            if name is None:
                name = open_package(package_path, verify=False).config.name
            found.setdefault(name, []).append((version, package_path))
        return found

    def _load_one(self, name: str, version: str, package_path: Path) -> ServedModel:
        settings = self._model_settings.get(name, self._defaults)
        logger.info("loading model", extra={"model": name, "version": version, "path": str(package_path)})
        started = time.perf_counter()
        plan = make_plan(package_path, settings.load_keywords())
        # A model whose environment must be built first loads in the background, not ready till then.
        neuropod = load_for_serving(plan)
        if name not in self._model_settings and settings.max_batch_size and _batch_symbol(neuropod) is None:
            # A server-wide batching default skips models that cannot batch; a per-model setting does not.
            logger.warning("model %s has no batch symbol to batch along; serving it unbatched", name)
            settings = replace(settings, max_batch_size=0)
        try:
            model = ServedModel(name, version, neuropod, settings)
        except BaseException:
            neuropod.close()
            raise
        logger.info(
            "loaded model",
            extra={
                "model": name,
                "version": version,
                "path": str(package_path),
                "runs": plan.describe(),
                "duration_s": round(time.perf_counter() - started, 3),
            },
        )
        return model

    def load(self, name: str) -> None:
        """Load (or reload) every version of model ``name`` from the root.

        The versions it serves now keep serving until the new ones have
        loaded; if loading fails they stay, and the error is raised.

        Raises:
            ModelNotFoundError: the root holds no model of that name.
        """
        with self._control:
            self._load_locked(name, self.scan())

    def _load_locked(self, name: str, found: Mapping[str, List[Tuple[str, Path]]]) -> None:
        entries = found.get(name)
        if entries is None:
            known = ", ".join(repr(n) for n in found) or "none"
            raise ModelNotFoundError(f"the repository holds no model named {name!r}; it holds {known}")
        self._seen[name] = tuple(_fingerprint(path) for _, path in entries)
        if name not in self._models:
            self._unserved[name] = ("LOADING", "")
        loaded: Dict[str, ServedModel] = {}
        try:
            for version, package_path in entries:
                loaded[version] = self._load_one(name, version, package_path)
        except Exception as exc:
            for model in loaded.values():
                model.close()
            if name not in self._models:
                self._unserved[name] = ("UNAVAILABLE", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        if self._closed:
            for model in loaded.values():
                model.close()
            return
        old = self._models.get(name, {})
        self._models[name] = loaded  # one assignment: a request sees the old versions or the new ones
        self._unserved.pop(name, None)
        for model in old.values():
            model.retire()

    def unload(self, name: str) -> None:
        """Stop serving model ``name``; requests using it now finish first.

        Raises:
            ModelNotFoundError: no model of that name is served.
        """
        with self._control:
            self._lookup(name)
            self._unload_locked(name, "unloaded")

    def _unload_locked(self, name: str, reason: str) -> None:
        old = self._models.pop(name, {})
        self._unserved[name] = ("UNAVAILABLE", reason)
        for model in old.values():
            model.retire()
        logger.info("unloaded model", extra={"model": name, "reason": reason})

    def load_all(self, strict: bool = True) -> List[str]:
        """Load every model of the root; returns the names of those that failed (logged with path and reason).

        Raises:
            NeuropodError: with ``strict``, the first model that fails to load.
        """
        self.loading = True
        failed: List[str] = []
        try:
            with self._control:
                found = self.scan()
                unknown = sorted(set(self._model_settings) - set(found))
                if unknown:
                    raise OptionError(f"settings name model(s) the repository does not hold: {', '.join(unknown)}")
                for name in found:
                    try:
                        self._load_locked(name, found)
                    except Exception as exc:
                        if strict:
                            raise
                        failed.append(name)
                        paths = ", ".join(str(path) for _, path in found[name])
                        logger.error(
                            "cannot load model; serving the others",
                            extra={
                                "model": name,
                                "path": paths,
                                "reason": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            },
                        )
        finally:
            self.loading = False
        return failed

    def poll(self) -> None:
        """Load added and changed models of the root, unload removed ones (errors are logged)."""
        with self._control:
            try:
                found = self.scan()
            except Exception as exc:  # a repository emptied for a moment: serve on
                logger.warning("cannot read the repository; serving on", extra={"reason": str(exc)})
                return
            for name in list(self._models):
                if name not in found:
                    self._seen.pop(name, None)
                    self._unload_locked(name, "removed from the repository")
            for name, entries in found.items():
                fingerprint = tuple(_fingerprint(path) for _, path in entries)
                if self._seen.get(name) == fingerprint:
                    continue
                logger.info("model changed on disk; loading it", extra={"model": name})
                try:
                    self._load_locked(name, found)
                except Exception as exc:
                    logger.error(
                        "cannot load model; its served versions (if any) stay",
                        extra={"model": name, "reason": str(exc).splitlines()[0] if str(exc) else type(exc).__name__},
                    )

    def index(self, ready_only: bool = False) -> List[ModelIndexEntry]:
        """Every model the repository serves or holds on disk, with its state."""
        entries: List[ModelIndexEntry] = []
        for model in self:
            ready = model.ready()
            if ready or not ready_only:
                entries.append(ModelIndexEntry(model.name, model.version, "READY" if ready else "UNAVAILABLE"))
        if not ready_only:
            on_disk: List[str] = []
            if self.root is not None:
                try:
                    on_disk = list(self.scan())
                except Exception:
                    on_disk = []
            unserved = dict(self._unserved)
            for name in on_disk:
                if name not in self._models:
                    unserved.setdefault(name, ("UNAVAILABLE", "not loaded"))
            for name, (state, reason) in sorted(unserved.items()):
                if name not in self._models:
                    entries.append(ModelIndexEntry(name, "", state, reason))
        return entries

    def max_batch_size(self) -> int:
        """The largest batch any model may be served with (for sizing thread pools before models load)."""
        sizes = [self._defaults.max_batch_size] + [s.max_batch_size for s in self._model_settings.values()]
        return max(sizes + [m.settings.max_batch_size for m in self])

    # -- lookups -----------------------------------------------------------------

    def add(self, model: ServedModel) -> None:
        versions = self._models.setdefault(model.name, {})
        if model.version in versions:
            raise PackageError(f"model {model.name!r} version {model.version} is served twice")
        versions[model.version] = model

    def known(self, name: str) -> bool:
        """Whether ``name`` is served, or was found in the repository (unloaded, loading or failed)."""
        return name in self._models or name in self._unserved

    def names(self) -> List[str]:
        return list(self._models)

    def versions(self, name: str) -> List[str]:
        return sorted(self._lookup(name), key=_version_key)

    def _lookup(self, name: str) -> Dict[str, ServedModel]:
        versions = self._models.get(name)
        if versions is None:
            state = self._unserved.get(name)
            if state is not None and state[0] == "LOADING":
                raise ModelNotReadyError(f"model {name!r} is loading")
            known = ", ".join(repr(n) for n in self._models) or "none"
            raise ModelNotFoundError(f"no model named {name!r}; this server serves {known}")
        return versions

    def get(self, name: str, version: str = "") -> ServedModel:
        """A model's given version, or its highest version when ``version`` is empty.

        Raises:
            ModelNotFoundError: no such model or version.
        """
        versions = self._lookup(name)
        if not version:
            if len(versions) == 1:  # the usual case, and asked on every request: no sorting
                return next(iter(versions.values()))
            return versions[max(versions, key=_version_key)]
        model = versions.get(version)
        if model is None:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; it has {', '.join(sorted(versions, key=_version_key))}"
            )
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in list(self._models.values()):  # a copy: loads and unloads change the dict
            yield from list(versions.values())

    def close(self) -> None:
        self._closed = True
        for model in list(self):
            try:
                model.close()
            except Exception:  # one model failing to close must not keep the others open
                logger.exception("closing model %s failed", model.name)


def _version_key(version: str) -> Tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
