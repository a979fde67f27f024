"""``InputBuilder``: features defined once, by name, and fed to every model that names them.

A feature is a function of one raw example that returns one example of a
tensor, with the spec of the batched tensor. A plan for a set of models is
checked when it is made: every input a model names must be a feature whose
spec fits the model's. Building a batch computes each feature once, however
many models consume it, and hands each model only the features its spec names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Sequence

import numpy as np

from ..errors import DatasetError, SpecError
from ..spec import TensorSpec
from .problem import check_problem

__all__ = ["Feature", "InputBuilder", "InputPlan"]


@dataclass(frozen=True)
class Feature:
    """One named feature: ``function(raw_example) -> array``, batched to match ``spec``."""

    spec: TensorSpec
    function: Callable[[Any], Any]

    @property
    def name(self) -> str:
        return self.spec.name


class InputBuilder:
    """Features by name. ``calls`` counts how often each feature's function ran.

    Example::

        builder = InputBuilder()

        @builder.feature("x", "float32", ("batch", 3))
        def x(example):
            return example["values"][:3]

        plan = builder.plan([model_a, model_b])    # checks specs now
        per_model = plan.build(raw_examples)       # one input dict per model
    """

    def __init__(self, features: Sequence[Feature] = ()) -> None:
        self._features: Dict[str, Feature] = {}
        self.calls: Counter[str] = Counter()
        for feature in features:
            self.add(feature)

    def add(self, feature: Feature) -> None:
        if feature.name in self._features:
            raise SpecError(f"feature {feature.name!r} is defined twice")
        self._features[feature.name] = feature

    def feature(
        self, name: str, dtype: Any, shape: Sequence[Any]
    ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Decorator: register ``function(raw_example)`` as feature ``name`` of the batched ``shape``."""

        def register(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
            self.add(Feature(TensorSpec(name, dtype, tuple(shape)), function))
            return function

        return register

    @property
    def features(self) -> Mapping[str, Feature]:
        return dict(self._features)

    def plan(self, models: Sequence[Any]) -> InputPlan:
        """Check every model's input specs against the features; return a plan that builds their inputs.

        Raises:
            SpecError: a model names an input no feature provides, or a feature's
                spec does not fit the model's (every problem is listed).
        """
        errors: List[str] = []
        wanted: List[List[str]] = []
        for model in models:
            label = getattr(model, "name", repr(model))
            names: List[str] = []
            for spec in model.problem.inputs:
                feature = self._features.get(spec.name)
                if feature is None:
                    errors.append(
                        f"model {label!r}: input {spec.name!r} has no feature; features: {sorted(self._features)}"
                    )
                    continue
                # The model must accept what the feature produces: check the feature as a one-input problem.
                check = check_problem(_single_input(spec), _single_input(feature.spec))
                errors += [f"model {label!r}: {_as_feature(error)}" for error in check.errors]
                names.append(spec.name)
            wanted.append(names)
        if errors:
            raise SpecError("; ".join(errors))
        return InputPlan(self, list(models), wanted)

    def compute(self, names: Sequence[str], examples: Sequence[Any]) -> Dict[str, np.ndarray]:
        """Each named feature over ``examples``, stacked into a batch (each computed once).

        Raises:
            DatasetError: a feature's function raised on an example (named, with its index).
            SpecError: a feature's values do not fit its own spec (dtype, rank, fixed sizes).
        """
        batch = {}
        for name in names:
            feature = self._features[name]
            values = []
            for index, example in enumerate(examples):
                try:
                    values.append(feature.function(example))
                except Exception as exc:  # the user's function: say which feature and example
                    raise DatasetError(
                        f"feature {name!r}: {_function_name(feature.function)} failed on example {index} "
                        f"of the batch: {type(exc).__name__}: {exc}"
                    ) from exc
            self.calls[name] += len(values)
            try:
                array = np.stack([np.asarray(value) for value in values]) if values else np.empty((0,))
            except ValueError as exc:
                raise SpecError(f"feature {name!r}: examples of different shapes cannot be batched: {exc}") from None
            if feature.spec.dtype != "string" and array.dtype != feature.spec.numpy_dtype:
                try:
                    array = array.astype(feature.spec.numpy_dtype)
                except (TypeError, ValueError):
                    raise SpecError(
                        f"feature {name!r}: {_function_name(feature.function)} gave {array.dtype} values, "
                        f"which do not convert to its spec's dtype {feature.spec.dtype}"
                    ) from None
            expected = feature.spec.shape
            if values and (
                array.ndim != len(expected)
                or any(isinstance(size, int) and size != got for size, got in zip(expected, array.shape))
            ):
                raise SpecError(
                    f"feature {name!r}: {_function_name(feature.function)} gave a batch of shape "
                    f"{list(array.shape)}; the feature's spec says {list(expected)}"
                )
            batch[name] = array
        return batch


def _function_name(function: Callable[[Any], Any]) -> str:
    return f"{getattr(function, '__qualname__', None) or repr(function)}()"


def _as_feature(error: str) -> str:
    """check_problem's words, where the feature plays the problem."""
    return error.replace("the problem says", "the feature says").replace("the problem's", "the feature's")


def _single_input(spec: TensorSpec) -> Any:
    from ..spec import ProblemDefinition

    return ProblemDefinition((spec,), ())


class InputPlan:
    """Inputs for a fixed set of models, checked when the plan was made."""

    def __init__(self, builder: InputBuilder, models: List[Any], wanted: List[List[str]]) -> None:
        self.builder = builder
        self.models = models
        self.wanted = wanted
        self.needed = sorted({name for names in wanted for name in names})

    def build(self, examples: Sequence[Any]) -> List[Dict[str, np.ndarray]]:
        """One input dict per model, in the plan's order; each feature computed once for the batch."""
        batch = self.builder.compute(self.needed, examples)
        return [{name: batch[name] for name in names} for names in self.wanted]

    def infer(self, examples: Sequence[Any]) -> List[Dict[str, np.ndarray]]:
        """Build the inputs and run every model on its own; one output dict per model."""
        return [model.infer(inputs) for model, inputs in zip(self.models, self.build(examples))]
