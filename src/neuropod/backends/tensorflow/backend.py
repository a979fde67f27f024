"""The TensorFlow backend: a TF1 GraphDef or a TF2 SavedModel, run eagerly through TF2.

Two artifacts are accepted under ``0/data/``:

- ``model.pb``, a (frozen) TF1 ``GraphDef``, with ``0/config.json`` holding
  ``node_name_mapping`` (spec name -> graph tensor name such as
  ``"ns/in_x:0"``; a name without ``:N`` means output 0, as in the original)
  and ``init_op_names`` (ops run once after loading; the
  original wrote ``{}`` when there were none). The graph is imported inside a
  ``tf.compat.v1.wrap_function`` and pruned to the fed inputs and the spec's
  outputs, so no global session or default graph is involved.
- ``savedmodel/``, a TF2 SavedModel served through one of its signatures
  (``signature_name`` in ``0/config.json``, ``serving_default`` by default);
  ``node_name_mapping`` there maps spec names to signature input/output names.

Custom ops listed in the package are loaded with ``tf.load_op_library``
before the model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import tensorflow as tf

from ...errors import InferenceError, InputValidationError, PackageError
from ...package import Package, layout
from ...package.manifest import sha256_file
from ...spec import TensorSpec, numpy_dtype
from ..base import Backend, BackendOptions, TensorDict, as_string_array, feeds_by_model_name, model_failure
from ..devices import pick_gpu

__all__ = [
    "TensorFlowBackend",
    "GRAPH_FILE",
    "SAVED_MODEL_DIR",
    "DEFAULT_SIGNATURE",
    "apply_thread_options",
    "choose_device",
    "load_custom_ops",
    "to_tensor",
    "to_numpy",
    "match_signature",
    "tf_dtype",
]

if not tf.executing_eagerly():  # TensorFlow 1.x (a worker of the original's era): run graphs as TF2 does
    tf.compat.v1.enable_eager_execution()

GRAPH_FILE = layout.TF_GRAPH
SAVED_MODEL_DIR = layout.TF_SAVED_MODEL
DEFAULT_SIGNATURE = layout.TF_DEFAULT_SIGNATURE


def apply_thread_options(intra_op_threads: Optional[int], inter_op_threads: Optional[int]) -> None:
    """Set TF's thread pools; TF fixes them when its runtime starts, so later changes only warn."""
    settings = (
        ("intra_op_threads", intra_op_threads, tf.config.threading.set_intra_op_parallelism_threads),
        ("inter_op_threads", inter_op_threads, tf.config.threading.set_inter_op_parallelism_threads),
    )
    for name, value, setter in settings:
        if not value:
            continue
        try:
            setter(value)
        except RuntimeError:
            warnings.warn(
                f"{name}={value} ignored: TensorFlow's runtime is already initialised in this process and its "
                "thread pools cannot change (load the model first, or in a worker process with use_ope=True)",
                RuntimeWarning,
                stacklevel=3,
            )


def choose_device(visible_gpu: Optional[int]) -> str:
    """``/GPU:N`` when TF sees that GPU, else ``/CPU:0`` (with a warning if a GPU was asked for)."""
    gpu_count = len(tf.config.list_physical_devices("GPU")) if visible_gpu is not None else 0
    gpu = pick_gpu(visible_gpu, gpu_count, "tensorflow")
    return "/CPU:0" if gpu is None else f"/GPU:{gpu}"


# sha256 of every custom-op library this process has loaded through us.
_loaded_op_libraries: Set[str] = set()


def _mapped_library_digests(size: int) -> Set[str]:
    """sha256 of the shared libraries of ``size`` bytes already mapped into this process (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    digests = set()
    for path in {line.split(None, 5)[5] for line in maps if len(line.split(None, 5)) == 6}:
        candidate = Path(path)
        try:
            if path.startswith("/") and candidate.is_file() and candidate.stat().st_size == size:
                digests.add(sha256_file(candidate))
        except OSError:
            continue
    return digests


def load_custom_ops(paths: Iterable[Path]) -> None:
    """``tf.load_op_library`` each library, unless the same library is already loaded.

    TF registers a library's kernels again when the same file is loaded from
    another path (the package's copy in ``0/ops`` after the user's original,
    or two packages holding one op), and then refuses to run the op for
    "multiple OpKernel registrations". Libraries are matched by content.
    """
    for path in paths:
        digest = sha256_file(path)
        if digest in _loaded_op_libraries or digest in _mapped_library_digests(path.stat().st_size):
            _loaded_op_libraries.add(digest)
            continue
        try:
            tf.load_op_library(str(path))
        except (tf.errors.OpError, OSError, RuntimeError) as exc:
            raise InferenceError(f"custom op {path.name!r} could not be loaded by TensorFlow: {exc}") from exc
        _loaded_op_libraries.add(digest)


def to_tensor(array: np.ndarray) -> Any:
    """A TF tensor from a numpy array (unicode arrays become tf.string, UTF-8 encoded).

    TF copies the array into its own buffer here: eager tensors own their memory.
    """
    return tf.convert_to_tensor(array)


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy array from a TF tensor; strings decoded to unicode.

    Numeric outputs are read-only views of the tensor's buffer, not copies:
    ``EagerTensor.numpy()`` copies, ``_numpy()`` views. The buffer may be the
    model's own constant or variable (an output that returns one as is), so
    writing to the view would change the model: it is marked read-only. The
    view keeps the tensor alive.
    """
    if not isinstance(value, tf.Tensor):
        try:
            value = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as exc:
            raise InferenceError(
                f"output {name!r}: the model returned {type(value).__name__}, expected a tensor"
            ) from exc
    if value.dtype == tf.string:
        return as_string_array(value.numpy())
    view_of = getattr(value, "_numpy", None)
    if view_of is None:  # not an eager CPU tensor with a host buffer
        return value.numpy()  # type: ignore[no-any-return]
    array = view_of()
    if not isinstance(array, np.ndarray):  # a 0-d tensor gives a numpy scalar, which has no flags to set
        return np.asarray(array)
    array.flags.writeable = False
    return array


def _mapping_from(settings: Mapping[str, Any], source: str) -> Dict[str, str]:
    mapping = settings.get("node_name_mapping") or {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise PackageError(f"{source}: node_name_mapping must map spec names to tensor names, got {mapping!r}")
    return dict(mapping)


def _init_ops_from(settings: Mapping[str, Any], source: str) -> List[str]:
    # The original wrote an empty dict when there were no init ops.
    init_ops = settings.get("init_op_names") or []
    if not isinstance(init_ops, list) or not all(isinstance(op, str) for op in init_ops):
        raise PackageError(f"{source}: init_op_names must be a list of op names, got {init_ops!r}")
    return list(init_ops)


class _GraphRunner:
    """A TF1 GraphDef imported into a wrapped function, pruned once per set of fed inputs."""

    def __init__(self, path: Path, settings: Mapping[str, Any], package: Package, device: str) -> None:
        source = str(package.root / layout.BACKEND_CONFIG)
        mapping = _mapping_from(settings, source)
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(path.read_bytes())
        except Exception as exc:  # protobuf's DecodeError, whatever module it lives in
            raise PackageError(f"{path}: not a TensorFlow GraphDef: {exc}") from exc
        for node in graph_def.node:
            # Device pins from the machine that froze the graph; the backend chooses the device.
            node.device = ""

        def import_graph() -> None:
            with tf.device(device):
                tf.compat.v1.import_graph_def(graph_def, name="")

        try:
            self._wrapped = tf.compat.v1.wrap_function(import_graph, [])
        except (ValueError, tf.errors.OpError) as exc:
            raise PackageError(f"{path}: TensorFlow {tf.__version__} cannot import this graph: {exc}") from exc
        graph = self._wrapped.graph
        self._feeds: Dict[str, Any] = {}
        for spec in package.config.input_spec:
            self._feeds[spec.name] = self._graph_tensor(graph, spec.name, mapping, path)
        self._output_names = [spec.name for spec in package.config.output_spec]
        self._fetches = [self._graph_tensor(graph, name, mapping, path) for name in self._output_names]
        self._pruned: Dict[Tuple[str, ...], Callable[..., Any]] = {}
        init_ops = _init_ops_from(settings, source)
        if init_ops:
            self._run_init_ops(graph, init_ops, path)

    @staticmethod
    def _graph_tensor(graph: Any, spec_name: str, mapping: Mapping[str, str], path: Path) -> Any:
        tensor_name = mapping.get(spec_name, spec_name)
        if ":" not in tensor_name:  # a node name means its first output, as in the original
            tensor_name += ":0"
        try:
            return graph.as_graph_element(tensor_name)
        except (KeyError, ValueError) as exc:
            raise PackageError(
                f"{path}: tensor {spec_name!r} maps to {tensor_name!r}, which is not in the graph: {exc}"
            ) from None

    def _run_init_ops(self, graph: Any, names: Sequence[str], path: Path) -> None:
        try:
            ops = [graph.get_operation_by_name(name) for name in names]
        except (KeyError, ValueError) as exc:
            raise PackageError(f"{path}: init op not found in the graph: {exc}") from None
        try:
            self._wrapped.prune(feeds=[], fetches=ops)()
        except tf.errors.OpError as exc:
            raise PackageError(f"{path}: init ops {list(names)} failed: {exc.message}") from exc

    def run(self, tensors: Mapping[str, Any]) -> TensorDict:
        fed = tuple(sorted(tensors))
        function = self._pruned.get(fed)
        if function is None:
            unknown = [name for name in fed if name not in self._feeds]
            if unknown:
                raise InputValidationError(f"input {unknown[0]!r} is not in the graph's node_name_mapping")
            try:
                function = self._wrapped.prune(feeds=[self._feeds[name] for name in fed], fetches=self._fetches)
            except Exception as exc:  # TF's UnliftableError: an output needs a placeholder that was not fed
                unfed = [name for name in self._feeds if name not in tensors]
                raise InputValidationError(
                    f"the outputs {self._output_names} need inputs that were not given: missing one of {unfed} ({exc})"
                ) from None
            self._pruned[fed] = function
        results = function(*[tensors[name] for name in fed])
        return {name: to_numpy(value, name) for name, value in zip(self._output_names, results)}


def tf_dtype(dtype: str) -> Any:
    """The TF dtype of a canonical spec dtype."""
    return tf.string if dtype == "string" else tf.as_dtype(numpy_dtype(dtype))


def match_signature(
    function: Any,
    input_specs: Sequence[TensorSpec],
    output_specs: Sequence[TensorSpec],
    mapping: Mapping[str, str],
    where: str,
) -> Tuple[Dict[str, str], List[Tuple[str, str]]]:
    """Pair spec names with a signature's input and output names, and check their dtypes.

    Returns ``{spec input: signature input}`` and ``[(spec output, signature
    output)]``. A spec name missing from ``mapping`` stands for itself. A
    function returning a bare tensor (or a tuple) has outputs ``output_0``,
    ``output_1`` ...: without a mapping, those match the spec by position.

    Raises:
        PackageError: a name matches nothing (the message lists what the signature has),
            or a dtype differs from the spec's.
    """
    signature_inputs = function.structured_input_signature[1]
    signature_outputs = sorted(function.structured_outputs)
    inputs: Dict[str, str] = {}
    for spec in input_specs:
        name = mapping.get(spec.name, spec.name)
        if name not in signature_inputs:
            raise PackageError(
                f"{where}: input {spec.name!r} maps to {name!r}, but the signature's inputs are "
                f"{sorted(signature_inputs)} (set node_name_mapping)"
            )
        if signature_inputs[name].dtype != tf_dtype(spec.dtype):
            raise PackageError(
                f"{where}: input {spec.name!r} is {spec.dtype} in the spec, but the signature's {name!r} takes "
                f"{signature_inputs[name].dtype.name}"
            )
        inputs[spec.name] = name
    unmapped = set(signature_inputs) - set(inputs.values())
    if unmapped:
        raise PackageError(f"{where}: signature inputs {sorted(unmapped)} are not in the input spec")
    output_names = [spec.name for spec in output_specs]
    pairs = [(spec_name, mapping.get(spec_name, spec_name)) for spec_name in output_names]
    if not all(name in signature_outputs for _, name in pairs):
        positional = [f"output_{i}" for i in range(len(output_names))]
        if sorted(positional) != signature_outputs or any(name in mapping for name in output_names):
            missing = [f"{spec_name!r} -> {name!r}" for spec_name, name in pairs if name not in signature_outputs]
            raise PackageError(
                f"{where}: outputs {', '.join(missing)} are not among the signature's outputs {signature_outputs} "
                "(set node_name_mapping)"
            )
        pairs = list(zip(output_names, positional))
    for spec, (_, name) in zip(output_specs, pairs):
        produced = function.structured_outputs[name].dtype
        if produced != tf_dtype(spec.dtype):
            raise PackageError(
                f"{where}: output {spec.name!r} is {spec.dtype} in the spec, but the signature's {name!r} is "
                f"{produced.name}"
            )
    return inputs, pairs


class _SignatureRunner:
    """A TF2 SavedModel called through one signature (keyword tensors in, dict out)."""

    def __init__(self, path: Path, settings: Mapping[str, Any], package: Package, device: str) -> None:
        source = str(package.root / layout.BACKEND_CONFIG)
        mapping = _mapping_from(settings, source)
        signature_name = settings.get("signature_name") or DEFAULT_SIGNATURE
        try:
            with tf.device(device):
                self._loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise PackageError(f"{path}: TensorFlow {tf.__version__} cannot load this SavedModel: {exc}") from exc
        signatures = self._loaded.signatures
        if signature_name not in signatures:
            raise PackageError(
                f"{path}: no signature {signature_name!r}; the SavedModel has {sorted(signatures.keys())}"
            )
        self._function = signatures[signature_name]
        self._input_names, self._output_names = match_signature(
            self._function,
            package.config.input_spec,
            package.config.output_spec,
            mapping,
            f"{path} signature {signature_name!r}",
        )

    def run(self, tensors: Mapping[str, Any]) -> TensorDict:
        feeds = feeds_by_model_name(tensors, self._input_names, "SavedModel signature")
        results = self._function(**feeds)
        return {spec_name: to_numpy(results[name], spec_name) for spec_name, name in self._output_names}


class TensorFlowBackend(Backend):
    """Runs ``0/data/savedmodel/`` (TF2) or ``0/data/model.pb`` (TF1 GraphDef) on the chosen device."""

    def __init__(self, package: Package, options: BackendOptions) -> None:
        super().__init__(package, options)
        apply_thread_options(options.intra_op_threads, options.inter_op_threads)
        load_custom_ops(package.custom_op_paths())
        self.device = choose_device(options.visible_gpu)
        settings = package.backend_config()
        saved_model = package.data_dir / SAVED_MODEL_DIR
        graph_file = package.data_dir / GRAPH_FILE
        self._runner: Any
        if saved_model.is_dir():
            self._runner = _SignatureRunner(saved_model, settings, package, self.device)
        elif graph_file.is_file():
            self._runner = _GraphRunner(graph_file, settings, package, self.device)
        else:
            raise PackageError(f"{package.data_dir}: neither {SAVED_MODEL_DIR}/ nor {GRAPH_FILE} is there")

    def required_inputs(self) -> Sequence[str]:
        """A TF2 signature needs every input; a TF1 graph is pruned to what the fed inputs reach."""
        if isinstance(self._runner, _GraphRunner):
            return []  # the pruned function names a missing input the outputs need (InputValidationError)
        return super().required_inputs()

    def infer(self, inputs: TensorDict) -> TensorDict:
        try:
            with tf.device(self.device):
                tensors = {name: to_tensor(array) for name, array in inputs.items()}
                return self._runner.run(tensors)  # type: ignore[no-any-return]
        except InputValidationError:
            raise
        except (tf.errors.OpError, TypeError, ValueError) as exc:
            message = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
            raise model_failure("TensorFlow", self.package.config.name, exc, message, inputs=inputs) from exc

    def close(self) -> None:
        self._runner = None
