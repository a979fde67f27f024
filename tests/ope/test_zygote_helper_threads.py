"""Weight sharing for models whose loading starts threads a fork handles anyway (issue 29 item 3).

Loading a transformers model shows a tqdm progress bar (tqdm keeps a monitor
thread for the process's life) and imports scipy (whose OpenBLAS starts its
pthreads pool). Neither stops the zygote from forking: the monitor is stopped
before the fork and tqdm starts another with its next bar; OpenBLAS stops its
pool before a fork and starts it again when next used.
"""

import numpy as np

from conftest import require
from neuropod import load_neuropod
from ope.test_shared_weights import parent_of, python_package

SCIPY_MODEL = """
import numpy as np
import scipy.linalg  # its OpenBLAS starts a pool of threads


def get_model(data_root):
    matrix = np.random.default_rng(0).random((400, 400))

    def run(x):
        product = scipy.linalg.blas.dgemm(1.0, matrix, matrix)  # runs on the pool, started again after the fork
        return {"y": x + np.allclose(product, matrix @ matrix)}

    return run
"""

TQDM_MODEL = """
import numpy as np
import tqdm


def get_model(data_root):
    for _ in tqdm.tqdm(range(3), desc="loading weights", mininterval=0):  # starts tqdm's monitor thread
        pass

    def run(x):
        for _ in tqdm.tqdm(range(2), disable=False):  # a bar in the worker: tqdm starts a monitor of its own
            pass
        return {"y": x + 1}

    return run
"""


def assert_forked_and_serving(model) -> None:
    executor = model.executor
    assert executor.sharing_refusal == ""
    zygote = executor.zygote.pid
    assert zygote is not None
    assert all(parent_of(pid) == zygote for pid in executor.worker_pids)
    for _ in range(4):  # calls go to both workers
        assert model.infer({"x": np.ones(1)})["y"][0] == 2.0


def test_a_model_importing_scipy_while_loading_is_shared_and_its_blas_pool_works_in_the_workers(tmp_path):
    require("scipy")
    path = python_package(tmp_path, "blas", SCIPY_MODEL)
    with load_neuropod(path, use_ope=True, workers=2, timeout=60) as model:
        assert_forked_and_serving(model)


def test_a_model_showing_a_tqdm_bar_while_loading_is_shared(tmp_path):
    require("tqdm")
    path = python_package(tmp_path, "bar", TQDM_MODEL)
    with load_neuropod(path, use_ope=True, workers=2, timeout=60) as model:
        assert_forked_and_serving(model)
