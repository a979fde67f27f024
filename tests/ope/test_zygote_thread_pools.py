"""Thread pools started while loading, and how often a refused fork is told (issue 29 item 3).

transformers loads a model's weights on a ``ThreadPoolExecutor`` that it
shuts down without waiting: its workers finish and exit by themselves, so the
zygote waits for them and forks (before, a worker still finishing stopped the
fork, and MiniLM's workers each loaded their own copy). A pool that is kept
still stops the fork, and the warning saying why comes once per model and
reason in a process, not on every load.
"""

import logging
import subprocess
import sys

import numpy as np

from conftest import require
from neuropod import load_neuropod
from ope.test_shared_weights import parent_of, python_package

POOL_SHUT_DOWN_WITHOUT_WAITING = """
import time
from concurrent.futures import ThreadPoolExecutor


def get_model(data_root):
    pool = ThreadPoolExecutor(max_workers=2)
    parts = [pool.submit(lambda: 1.0), pool.submit(lambda: time.sleep(0.5) or 0.0)]  # the last still running
    pool.shutdown(wait=False)  # as transformers does once it has loaded the weights
    offset = parts[0].result()

    def run(x):
        return {"y": x + offset}

    return run
"""

POOL_KEPT = """
from concurrent.futures import ThreadPoolExecutor

POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kept-pool")


def get_model(data_root):
    offset = POOL.submit(lambda: 1.0).result()  # its worker stays, idle: a fork would not copy it

    def run(x):
        return {"y": x + offset}

    return run
"""


def test_a_pool_shut_down_without_waiting_while_loading_does_not_stop_the_fork(tmp_path):
    path = python_package(tmp_path, "pool_shut_down", POOL_SHUT_DOWN_WITHOUT_WAITING)
    with load_neuropod(path, use_ope=True, workers=2, timeout=60) as model:
        executor = model.executor
        assert executor.sharing_refusal == ""
        zygote = executor.zygote.pid
        assert zygote is not None
        assert all(parent_of(pid) == zygote for pid in executor.worker_pids)
        for _ in range(4):  # calls go to both workers
            assert model.infer({"x": np.ones(1)})["y"][0] == 2.0


def test_a_kept_pool_stops_the_fork_and_the_warning_comes_once_for_two_loads(tmp_path, caplog):
    path = python_package(tmp_path, "pool_kept", POOL_KEPT)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            with load_neuropod(path, use_ope=True, workers=2, timeout=60) as model:
                assert "kept-pool" in model.executor.sharing_refusal
                assert model.infer({"x": np.ones(1)})["y"][0] == 2.0
    said = [record for record in caplog.records if "own copy of the weights" in record.getMessage()]
    assert len(said) == 1, [record.getMessage() for record in said]
    assert "'pool_kept'" in said[0].getMessage() and "kept-pool" in said[0].getMessage()


STOPPED_MONITORS = """
import os
import tqdm
from neuropod.ope import zygote

threads_before = zygote.native_threads()
refusals = []
with open(os.devnull, "w") as nowhere:
    for _ in range(100):
        for _ in tqdm.tqdm(range(2), mininterval=0, file=nowhere):  # starts tqdm's monitor thread
            pass
        refusals.append(zygote._fork_refusal(threads_before))  # stops (joins) it, then counts threads
print(sorted(set(refusals)))
"""


def test_a_stopped_helper_thread_still_leaving_the_kernel_list_does_not_stop_the_fork():
    """A joined thread can stay in /proc/self/task for a moment: that made MiniLM's zygote refuse, now and then.

    tqdm's monitor is stopped (joined) before the fork; on a loaded machine its
    native thread was still listed right after the join 7 times in 200 here, and
    the refusal read "loading the model started 1 native thread(s)". Run in a
    fresh process, as a zygote is (this one has threads of its own).
    """
    require("tqdm")
    result = subprocess.run(
        [sys.executable, "-c", STOPPED_MONITORS], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['']"
