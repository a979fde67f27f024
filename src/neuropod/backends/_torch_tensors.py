"""numpy <-> torch conversion without copies, shared by the torch backends."""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

from ..errors import InferenceError
from ..package import Package
from ..spec import numpy_dtype
from .base import Backend, BackendOptions, TensorDict, as_string_array
from .devices import pick_gpu

__all__ = [
    "TorchBackend",
    "apply_thread_options",
    "choose_device",
    "freeze_parameters",
    "input_devices",
    "load_custom_ops",
    "outputs_to_numpy",
    "to_numpy",
    "to_torch",
]


def choose_device(visible_gpu: Optional[int]) -> torch.device:
    """``cuda:N`` when that GPU exists, else the CPU (with a warning if a GPU was asked for)."""
    gpu_count = torch.cuda.device_count() if visible_gpu is not None and torch.cuda.is_available() else 0
    gpu = pick_gpu(visible_gpu, gpu_count, "torch")
    return torch.device("cpu") if gpu is None else torch.device("cuda", gpu)


def input_devices(model_device: torch.device, tensor_devices: Mapping[str, str]) -> Dict[str, torch.device]:
    """Each input's device: the model's GPU for inputs marked GPU, the CPU otherwise."""
    cpu = torch.device("cpu")
    return {name: (model_device if device == "GPU" else cpu) for name, device in tensor_devices.items()}


def freeze_parameters(module: Any) -> None:
    """Stop autograd recording for the model, so calls need no ``no_grad`` context.

    With no parameter requiring grad, no graph is built (inputs from numpy
    never require grad), which saves the context manager's cost on every call.
    """
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def apply_thread_options(intra_op_threads: Optional[int], inter_op_threads: Optional[int]) -> None:
    # torch's thread pools are per process; the last model loaded with a setting wins.
    if intra_op_threads:
        torch.set_num_threads(intra_op_threads)
    if inter_op_threads:
        try:
            torch.set_num_interop_threads(inter_op_threads)
        except RuntimeError:
            warnings.warn(
                "torch inter-op threads can only be set before torch runs parallel work; ignored",
                RuntimeWarning,
                stacklevel=2,
            )


# sha256 of every op library file this process has loaded, by path.
_OP_LIBRARY_DIGESTS: Dict[str, str] = {}


def _file_digest(path: str) -> str:
    digest = _OP_LIBRARY_DIGESTS.get(path)
    if digest is None:
        with open(path, "rb") as handle:
            digest = _OP_LIBRARY_DIGESTS[path] = hashlib.sha256(handle.read()).hexdigest()
    return digest


def load_custom_ops(paths: Any) -> None:
    """Load each op library once per process, whatever path it comes from.

    A TORCH_LIBRARY namespace may be registered only once per process, and a
    second registration aborts the process (it is not an exception). The same
    library arrives under several paths: the copy the user loaded to script
    the model, then the package's copy for the self-test, then another cache
    directory for a second package. So a library whose bytes are already
    loaded is skipped.
    """
    loaded = set()
    for known in list(torch.ops.loaded_libraries):
        try:
            loaded.add(_file_digest(str(known)))
        except OSError:
            continue  # a library loaded from a file that is gone since
    for path in paths:
        try:
            digest = _file_digest(str(path))
            if digest in loaded:
                continue
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as exc:
            raise InferenceError(f"custom op {path.name!r} could not be loaded: {exc}") from exc
        loaded.add(digest)


def to_torch(array: np.ndarray, device: torch.device) -> Any:
    """A torch tensor sharing ``array``'s memory (CPU), or a list of str for strings.

    This runs once per input per call, so the common case (a writable
    numeric array) takes the fewest checks.
    """
    kind = array.dtype.kind
    if kind == "U":
        return array.tolist()
    if kind == "V":  # ml_dtypes' bfloat16, which torch cannot read directly
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
    elif array.flags.writeable:
        try:
            tensor = torch.from_numpy(array)
        except ValueError:  # negative strides: torch needs a copy
            tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        # Read-only arrays (e.g. views of shared memory) are shared as is:
        # the model must not write to its inputs, which is the contract anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cpu":
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy array viewing a CPU tensor's memory (copies only from a GPU)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            value = value.detach()
        if value.device.type != "cpu":  # (torch < 1.13 has no Tensor.is_cpu)
            value = value.cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.uint16).numpy().view(numpy_dtype("bfloat16"))
        return value.numpy()
    if isinstance(value, (list, tuple)):
        return as_string_array(value)
    if isinstance(value, (str, bytes)):
        return as_string_array([value])
    raise InferenceError(
        f"output {name!r}: the model returned {type(value).__name__}, expected a tensor or a list of strings"
    )


def _is_string_list(value: Any) -> bool:
    return len(value) > 0 and isinstance(value[0], (str, list)) and not isinstance(value[0], torch.Tensor)


def outputs_to_numpy(result: Any, names: List[str]) -> TensorDict:
    """Name a torch model's result after the output spec and convert it to numpy.

    A dict keeps its keys; a named tuple its fields; a tuple of dicts is
    merged into one dict (TorchScript dicts hold one value type, so the
    original's way to return tensors and strings together is
    ``return tensor_dict, string_dict``); a tuple or list of tensors takes
    the spec's names in order; one tensor (or one list of strings) is the
    only output.
    """
    if isinstance(result, dict):
        return {str(k): to_numpy(v, str(k)) for k, v in result.items()}
    if hasattr(result, "_fields"):  # a named tuple
        return {k: to_numpy(getattr(result, k), k) for k in result._fields}
    if isinstance(result, tuple) and result and all(isinstance(part, dict) for part in result):
        merged: TensorDict = {}
        for part in result:
            for key, value in part.items():
                name = str(key)
                if name in merged:
                    raise InferenceError(
                        f"output {name!r} is returned by two of the dicts the model returned; each name may appear once"
                    )
                merged[name] = to_numpy(value, name)
        return merged
    if isinstance(result, (tuple, list)) and not _is_string_list(result):
        if len(result) != len(names):
            raise InferenceError(
                f"model returned {len(result)} values, but the output spec names {len(names)}: {names}"
            )
        return {name: to_numpy(value, name) for name, value in zip(names, result)}
    if len(names) != 1:
        raise InferenceError(
            f"model returned a single {type(result).__name__}, but the output spec names {len(names)} outputs: {names}"
        )
    return {names[0]: to_numpy(result, names[0])}


class TorchBackend(Backend):
    """What the torch backends share: threads, custom ops, devices and output naming.

    Subclasses load ``self.module`` and implement ``infer`` with
    :meth:`to_tensors` and :func:`outputs_to_numpy`.
    """

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        apply_thread_options(options.intra_op_threads, options.inter_op_threads)
        load_custom_ops(package.custom_op_paths())
        self.device = choose_device(options.visible_gpu)
        self._input_devices = input_devices(self.device, package.config.input_tensor_device)
        self._cpu = torch.device("cpu")
        self._output_names = [spec.name for spec in package.config.output_spec]
        self.module: Any = None
        #: Told how many nanoseconds each numpy-to-torch conversion took (an OPE worker's stage timing).
        self.conversion_observer: Optional[Callable[[int], None]] = None

    def to_tensors(self, inputs: TensorDict) -> Dict[str, Any]:
        devices = self._input_devices
        cpu = self._cpu
        observe = self.conversion_observer
        began = time.perf_counter_ns() if observe is not None else 0
        tensors = {name: to_torch(array, devices.get(name, cpu)) for name, array in inputs.items()}
        if observe is not None:
            observe(time.perf_counter_ns() - began)
        return tensors

    def close(self) -> None:
        self.module = None
