"""Large tensors over gRPC: raw contents in the message vs the system shared memory extension, same run.

Serves the adder (out = x + y, float32) with ``neuropod serve`` and sends
16 MiB and 64 MiB inputs with tritonclient's gRPC client, both ways:

* raw: ``raw_input_contents`` in the request and ``raw_output_contents`` in the
  response (the tensor bytes cross the socket three times: x, y, out);
* shm: x and y are written once into a registered POSIX shared memory region,
  the output is written by the server into another; only the message head
  crosses the socket. The client's copy into the region is counted per call.

    python bench/shm.py                 # about a minute
    python bench/shm.py --calls 5 --sizes 16

Prints the median call time per size and way, and raw/shm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))
from serving_models import make_adder, stop_process  # noqa: E402

from serve import start_neuropod  # noqa: E402


def _one_size(client: Any, grpcclient: Any, shm: Any, mib: int, calls: int) -> Dict[str, float]:
    """Median milliseconds per call of each way for tensors of ``mib`` MiB."""
    shape = [1, mib * 1024 * 1024 // 4]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    nbytes = x.nbytes
    raw_inputs = [grpcclient.InferInput(n, shape, "FP32") for n in ("x", "y")]
    for tensor in raw_inputs:
        tensor.set_data_from_numpy(x)

    def raw_call() -> None:
        out = client.infer("adder", raw_inputs).as_numpy("out")
        assert out is not None and out.shape == tuple(shape)

    key_in, key_out = f"/np-bench-in-{mib}", f"/np-bench-out-{mib}"
    region_in = shm.create_shared_memory_region("in", key_in, 2 * nbytes)
    region_out = shm.create_shared_memory_region("out", key_out, nbytes)
    try:
        client.register_system_shared_memory("in", key_in, 2 * nbytes)
        client.register_system_shared_memory("out", key_out, nbytes)
        shm_inputs = [grpcclient.InferInput(n, shape, "FP32") for n in ("x", "y")]
        shm_inputs[0].set_shared_memory("in", nbytes)
        shm_inputs[1].set_shared_memory("in", nbytes, offset=nbytes)
        shm_output = grpcclient.InferRequestedOutput("out")
        shm_output.set_shared_memory("out", nbytes)

        def shm_call() -> None:
            shm.set_shared_memory_region(region_in, [x, x])  # the client's copy counts
            client.infer("adder", shm_inputs, outputs=[shm_output])
            out = shm.get_contents_as_numpy(region_out, np.float32, shape)
            assert out.shape == tuple(shape)

        timings: Dict[str, List[float]] = {"raw": [], "shm": []}
        for _ in range(2):  # warm-up
            raw_call()
            shm_call()
        for _ in range(calls):  # interleaved: background load hits both alike
            for way, call in (("raw", raw_call), ("shm", shm_call)):
                started = time.perf_counter()
                call()
                timings[way].append(time.perf_counter() - started)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(region_in)
        shm.destroy_shared_memory_region(region_out)
    return {way: statistics.median(values) * 1000 for way, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="MiB per tensor")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per size and way")
    args = parser.parse_args()

    import tritonclient.grpc as grpcclient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tritonclient.utils.shared_memory as shm

    results: Dict[int, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process, grpc_port, _ = start_neuropod(make_adder(Path(tmp) / "adder"))
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for mib in args.sizes:
                results[mib] = _one_size(client, grpcclient, shm, mib, args.calls)
                cell = results[mib]
                print(f"  {mib} MiB: raw {cell['raw']:.1f} ms, shm {cell['shm']:.1f} ms", file=sys.stderr)
        finally:
            client.close()
            stop_process(process)  # type: ignore[arg-type]
    print(f"\nadder over gRPC, float32 x, y and out of the given size, median of {args.calls} calls\n")
    print("| tensor | raw contents ms | shared memory ms | raw / shm |")
    print("|--------|-----------------|------------------|-----------|")
    for mib, cell in results.items():
        print(f"| {mib} MiB | {cell['raw']:.1f} | {cell['shm']:.1f} | {cell['raw'] / cell['shm']:.2f} |")


if __name__ == "__main__":
    main()
