"""Conformance builders for the TensorFlow and Keras backends.

``BUILDERS[platform].build(path, problem)`` packages ``problem`` at ``path``
(a zip) and returns the path, or raises ``NotImplementedError`` when the
framework cannot express the problem. The TensorFlow builder writes TF2
SavedModels from ``tf.function``\\ s; the Keras builder writes ``.keras``
functional models built from Keras layers and ``keras.ops`` only, so they run
on any Keras backend (Keras has no portable string ops: the string problems
are not expressible there).

Frameworks are imported on first ``build``, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

from conformance.problems import problem_specs  # tests/ is on sys.path through its conftest
from neuropod.packagers import create_keras_neuropod, create_tensorflow_neuropod


class TFBuilder:
    """Packages each problem as a TF2 SavedModel traced from a ``tf.function``."""

    platform = "tensorflow"

    def build(self, path: Path, problem: str) -> Path:
        import tensorflow as tf

        def addition(x: Any, y: Any) -> Any:
            return {"out": x + y}

        def strings(a: Any, b: Any) -> Any:
            return {"out": tf.strings.join([a, b])}

        def mixed(x: Any) -> Any:
            return {
                "total": tf.reshape(tf.reduce_sum(x), [1]),
                "label": tf.where(x > 0, tf.constant("pos"), tf.constant("neg")),
            }

        def dtypes(b: Any, h: Any, i: Any, u: Any) -> Any:
            return {
                "nb": tf.logical_not(b),
                "h2": h * tf.constant(2, tf.float16),
                "i2": i + tf.constant(1, tf.int64),
                "u2": u + tf.constant(1, tf.uint8),  # uint8 arithmetic wraps in TF
            }

        def identity_big(x: Any) -> Any:
            return {"out": tf.identity(x)}

        functions: Dict[str, Callable[..., Any]] = {
            "addition": addition,
            "strings": strings,
            "mixed": mixed,
            "dtypes": dtypes,
            "identity_big": identity_big,
        }
        if problem not in functions:
            raise NotImplementedError(f"tensorflow: unknown problem {problem!r}")
        input_spec, output_spec = problem_specs(problem)
        return create_tensorflow_neuropod(
            neuropod_path=path,
            model_name=f"tf_{problem}",
            model=tf.function(functions[problem]),
            input_spec=input_spec,
            output_spec=output_spec,
        )


class KerasBuilder:
    """Packages each problem as a functional Keras 3 model (layers and ``keras.ops`` only)."""

    platform = "keras"

    def build(self, path: Path, problem: str) -> Path:
        if problem in ("strings", "mixed"):
            raise NotImplementedError(f"keras: {problem!r} needs string tensors, which keras.ops cannot compute")
        import keras

        if problem == "addition":
            x = keras.Input(shape=(None,), name="x", dtype="float32")
            y = keras.Input(shape=(None,), name="y", dtype="float32")
            model = keras.Model([x, y], {"out": keras.layers.Add()([x, y])})
        elif problem == "dtypes":
            b = keras.Input(shape=(), name="b", dtype="bool")
            h = keras.Input(shape=(), name="h", dtype="float16")
            i = keras.Input(shape=(), name="i", dtype="int64")
            u = keras.Input(shape=(), name="u", dtype="uint8")
            outputs = {
                "nb": keras.ops.logical_not(b),
                "h2": keras.ops.multiply(h, 2),
                "i2": keras.ops.add(i, 1),
                "u2": keras.ops.add(u, 1),
            }
            model = keras.Model([b, h, i, u], outputs)
        elif problem == "identity_big":
            x = keras.Input(shape=(), name="x", dtype="float32")
            model = keras.Model(x, {"out": keras.layers.Identity()(x)})
        else:
            raise NotImplementedError(f"keras: unknown problem {problem!r}")
        input_spec, output_spec = problem_specs(problem)
        return create_keras_neuropod(
            neuropod_path=path,
            model_name=f"keras_{problem}",
            model=model,
            input_spec=input_spec,
            output_spec=output_spec,
        )


BUILDERS = {"tensorflow": TFBuilder(), "keras": KerasBuilder()}
