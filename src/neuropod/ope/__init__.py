"""Out-of-process execution: worker processes fed through shared memory.

Internal: use it through ``load_neuropod(path, use_ope=True)``; nothing here is
public API (docs/api.md lists what is).

* :mod:`~neuropod.ope.wire` — the control-message format (all its constants).
* :mod:`~neuropod.ope.shm` — shared-memory segments and the pool that reuses them.
* :mod:`~neuropod.ope.channel` — the control socket, with its spin-then-block wait.
* :mod:`~neuropod.ope.spin` — how long a side spins before it sleeps (adaptive spinning).
* :mod:`~neuropod.ope.stages` — per-stage timing of calls (``NEUROPOD_OPE_STAGES=1``).
* :mod:`~neuropod.ope.tensors` — numpy arrays to segment references and back.
* :mod:`~neuropod.worker` — the worker's main (``python -m neuropod.worker``).
* :mod:`~neuropod.ope.client` — the parent's handle on one worker.
* :mod:`~neuropod.ope.zygote` — loads a model once and forks its workers (one copy of the weights).
* :mod:`~neuropod.ope.options` — the options ``load_neuropod(use_ope=True, ...)`` takes.

The executor that ties them together is :mod:`neuropod.executors.ope`.
"""
