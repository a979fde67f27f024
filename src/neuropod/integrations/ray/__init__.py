"""Ray integration: online serving on Ray Serve, offline batch inference on Ray Data.

* :func:`neuropod_deployment` — a Ray Serve application serving one package (or
  a model URL) with the KServe v2 REST routes of the server's data plane, so
  tritonclient, curl and ``load_neuropod("http://...")`` work against it
  unchanged; replicas and autoscaling are Ray Serve's, batching the server's.
* :class:`NeuropodPredictor` / :func:`predict_dataset` — a callable class for
  ``Dataset.map_batches`` that runs a package over a Ray Dataset.
* :func:`iter_dataset_batches` — a Ray Dataset as an iterable of numpy batches
  (what the evaluation and comparison tools consume).

Needs the ``ray`` extra (``pip install 'neuropod-python[ray]'``). Importing this
package imports no Ray: the Serve module imports it when first taken from
here, the Data helpers when first called.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Optional

__all__ = [
    "NeuropodDeployment",
    "neuropod_deployment",
    "NeuropodPredictor",
    "predict_dataset",
    "iter_dataset_batches",
]

_EXPORTS: Dict[str, str] = {
    "NeuropodDeployment": "serve",
    "neuropod_deployment": "serve",
    "NeuropodPredictor": "data",
    "predict_dataset": "data",
    "iter_dataset_batches": "data",
}


def _load_here(model: Any, load_options: Optional[Mapping[str, Any]]) -> Any:
    """The model loaded in this Ray actor: planned with the GPUs Ray gave it (the first one unless
    ``visible_gpu`` says otherwise; Ray sets CUDA_VISIBLE_DEVICES to them, so it is index 0)."""
    import ray

    from ...loader import load_planned
    from ...plan import Host, make_plan

    return load_planned(make_plan(model, load_options, Host.current(gpus=ray.get_gpu_ids())))


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'neuropod.integrations.ray' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> Any:
    return sorted(list(globals()) + list(_EXPORTS))
