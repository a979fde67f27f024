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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..envs.deferred import load_for_serving
from ..errors import ModelNotFoundError, ModelNotReadyError, OptionError, PackageError
from ..loader import Neuropod
from ..package import layout, open_package

__all__ = ["ModelSettings", "ServedModel", "ModelRepository", "find_packages", "DEFAULT_VERSION"]

logger = logging.getLogger("neuropod.serving")

TensorDict = Dict[str, np.ndarray]

#: The version of a model that has no numbered version folders.
DEFAULT_VERSION = "1"


@dataclass(frozen=True)
class ModelSettings:
    """How one model is run by the server.

    Attributes:
        use_ope: run it in out-of-process workers;
            the default runs it in the server process.
        max_batch_size: merge concurrent requests into calls of up to this
            many rows (0 turns dynamic batching off). Needs a model whose
            inputs and outputs all start with one batch symbol.
        max_queue_delay_ms: how long the first request of a batch waits for
            others to join it.
        load_options: more keyword arguments for ``load_neuropod``.
        isolation: ``"process"``, ``"sandbox"`` or ``"container"`` runs it in
            isolated workers (docs/isolation.md; limits go in ``load_options``);
            None leaves it to ``use_ope`` and the trust policy.
    """

    use_ope: bool = False
    max_batch_size: int = 0
    max_queue_delay_ms: float = 2.0
    load_options: Mapping[str, Any] = field(default_factory=dict)
    isolation: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) or self.max_batch_size < 0:
            raise OptionError(f"max_batch_size: expected a non-negative int, got {self.max_batch_size!r}")
        if not isinstance(self.max_queue_delay_ms, (int, float)) or self.max_queue_delay_ms < 0:
            raise OptionError(f"max_queue_delay_ms: expected a non-negative number, got {self.max_queue_delay_ms!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model settings") -> ModelSettings:
        """Build from a JSON object; unknown keys are refused by name."""
        known = {"use_ope", "max_batch_size", "max_queue_delay_ms", "load_options", "isolation"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"{where}: unknown setting(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        return cls(**dict(data))


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
        started = time.perf_counter()
        outputs = self.neuropod._run_checked(inputs, bindings)
        elapsed = time.perf_counter() - started
        mean = self.mean_call_s
        # A moving average: a model whose calls slow down (bigger inputs) is noticed within a few calls.
        self.mean_call_s = elapsed if mean is None else 0.8 * mean + 0.2 * elapsed
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

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.neuropod.close()


def _is_package(path: Path) -> bool:
    """A package directory, or a zip (packagers write zips with or without the suffix)."""
    return (path.is_dir() and (path / layout.CONFIG).is_file()) or (path.is_file() and zipfile.is_zipfile(path))


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


class ModelRepository:
    """The models a server serves, by name and version.

    The repository owns the models: :meth:`close` closes them all.
    """

    def __init__(self) -> None:
        self._models: Dict[str, Dict[str, ServedModel]] = {}

    @classmethod
    def from_path(
        cls,
        path: Union[str, Path],
        default_settings: Optional[ModelSettings] = None,
        model_settings: Optional[Mapping[str, ModelSettings]] = None,
    ) -> ModelRepository:
        """Load every package of a package path or repository directory.

        Args:
            path: one package, or a repository directory (see the module doc).
            default_settings: settings for models not named in ``model_settings``.
            model_settings: per-model settings, by model name.
        """
        repository = cls()
        default_settings = default_settings or ModelSettings()
        model_settings = model_settings or {}
        try:
            for found_name, version, package_path in find_packages(path):
                name = found_name or open_package(package_path, verify=False).config.name
                settings = model_settings.get(name, default_settings)
                isolation: Dict[str, Any] = {"isolation": settings.isolation} if settings.isolation else {}
                # A model whose environment must be built first loads in the background, not ready till then.
                neuropod = load_for_serving(
                    package_path, use_ope=settings.use_ope, **isolation, **dict(settings.load_options)
                )
                if name not in model_settings and settings.max_batch_size and _batch_symbol(neuropod) is None:
                    # A server-wide batching default skips models that cannot batch; a per-model setting does not.
                    logger.warning("model %s has no batch symbol to batch along; serving it unbatched", name)
                    settings = replace(settings, max_batch_size=0)
                try:
                    repository.add(ServedModel(name, version, neuropod, settings))
                except BaseException:
                    neuropod.close()
                    raise
                logger.info("loaded model", extra={"model": name, "version": version, "path": str(package_path)})
        except BaseException:
            repository.close()
            raise
        unknown = sorted(set(model_settings) - set(repository.names()))
        if unknown:
            repository.close()
            raise OptionError(f"settings name model(s) the repository does not hold: {', '.join(unknown)}")
        return repository

    def add(self, model: ServedModel) -> None:
        versions = self._models.setdefault(model.name, {})
        if model.version in versions:
            raise PackageError(f"model {model.name!r} version {model.version} is served twice")
        versions[model.version] = model

    def names(self) -> List[str]:
        return list(self._models)

    def versions(self, name: str) -> List[str]:
        return sorted(self._lookup(name), key=_version_key)

    def _lookup(self, name: str) -> Dict[str, ServedModel]:
        versions = self._models.get(name)
        if versions is None:
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
            return versions[max(versions, key=_version_key)]
        model = versions.get(version)
        if model is None:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; it has {', '.join(sorted(versions, key=_version_key))}"
            )
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in self._models.values():
            yield from versions.values()

    def close(self) -> None:
        for model in list(self):
            try:
                model.close()
            except Exception:  # one model failing to close must not keep the others open
                logger.exception("closing model %s failed", model.name)


def _version_key(version: str) -> Tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
