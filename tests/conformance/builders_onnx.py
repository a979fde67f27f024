"""Conformance builder for ONNX: graphs written with ``onnx.helper`` (opset 20).

ONNX has string tensors (``StringConcat``, string ``Where``), so every
problem is expressible. onnx is imported on first ``build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from problems import problem_specs

from neuropod.packagers import create_onnx_neuropod

OPSET = 20


def _graph(problem: str) -> Any:
    from onnx import TensorProto, helper

    def value(name: str, dtype: int, shape: List[Any]) -> Any:
        return helper.make_tensor_value_info(name, dtype, shape)

    def const(name: str, dtype: int, values: List[Any]) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [], values))

    f32, string = TensorProto.FLOAT, TensorProto.STRING
    if problem == "addition":
        nodes = [helper.make_node("Add", ["x", "y"], ["out"])]
        inputs = [value("x", f32, ["batch", None]), value("y", f32, ["batch", None])]
        outputs = [value("out", f32, ["batch", None])]
    elif problem == "strings":
        nodes = [helper.make_node("StringConcat", ["a", "b"], ["out"])]
        inputs = [value("a", string, ["n"]), value("b", string, ["n"])]
        outputs = [value("out", string, ["n"])]
    elif problem == "mixed":
        nodes = [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=1),  # all axes, kept: shape [1]
            const("zero", f32, [0.0]),
            helper.make_node("Greater", ["x", "zero"], ["positive"]),
            const("pos", string, [b"pos"]),
            const("neg", string, [b"neg"]),
            helper.make_node("Where", ["positive", "pos", "neg"], ["label"]),
        ]
        inputs = [value("x", f32, ["n"])]
        outputs = [value("total", f32, [1]), value("label", string, ["n"])]
    elif problem == "dtypes":
        nodes = [
            helper.make_node("Not", ["b"], ["nb"]),
            const("two", TensorProto.FLOAT16, [2.0]),
            helper.make_node("Mul", ["h", "two"], ["h2"]),
            const("one64", TensorProto.INT64, [1]),
            helper.make_node("Add", ["i", "one64"], ["i2"]),
            const("one8", TensorProto.UINT8, [1]),
            helper.make_node("Add", ["u", "one8"], ["u2"]),
        ]
        inputs = [
            value("b", TensorProto.BOOL, ["n"]),
            value("h", TensorProto.FLOAT16, ["n"]),
            value("i", TensorProto.INT64, ["n"]),
            value("u", TensorProto.UINT8, ["n"]),
        ]
        outputs = [
            value("nb", TensorProto.BOOL, ["n"]),
            value("h2", TensorProto.FLOAT16, ["n"]),
            value("i2", TensorProto.INT64, ["n"]),
            value("u2", TensorProto.UINT8, ["n"]),
        ]
    elif problem == "identity_big":
        nodes = [helper.make_node("Identity", ["x"], ["out"])]
        inputs = [value("x", f32, [None])]
        outputs = [value("out", f32, [None])]
    else:
        raise NotImplementedError(f"onnx: unknown problem {problem!r}")
    graph = helper.make_graph(nodes, problem, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


class OnnxBuilder:
    platform = "onnx"

    def build(self, path: Path, problem: str) -> Path:
        input_spec, output_spec = problem_specs(problem)
        return create_onnx_neuropod(
            neuropod_path=path,
            model_name=f"onnx_{problem}",
            model=_graph(problem),
            input_spec=input_spec,
            output_spec=output_spec,
        )


BUILDERS = {"onnx": OnnxBuilder()}
