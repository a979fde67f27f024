"""Metrics: built in for common problems, and user callables registered by name.

A metric reads one model output (``output=``) and the dataset field holding
its truth (``label=``), updates running totals batch by batch (so memory
stays flat over a dataset) and reports a dict of values at the end.

Which output and label, when not given: the only output of the model; the
label field mapped to that output (``labels={"out": "target"}`` /
``--labels out=target``), else a field named like the output, else a field
named ``label``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np

from ..errors import MetricError

__all__ = [
    "Metric",
    "MetricError",
    "register_metric",
    "metric_names",
    "make_metric",
    "parse_metric",
]


class Metric:
    """A running metric: :meth:`update` per batch, :meth:`result` at the end.

    Args:
        name: the name it is reported under.
        output: the model output it reads (None: the only one).
        label: the dataset field with the truth (None: see the module docs).
    """

    def __init__(self, name: str, output: Optional[str] = None, label: Optional[str] = None, **options: Any) -> None:
        if options:
            raise MetricError(f"metric {name!r}: unknown option(s) {', '.join(sorted(options))}")
        self.name = name
        # "" until bind() resolves them against the model and the data.
        self.output: str = output or ""
        self.label: str = label or ""

    def bind(self, outputs: Sequence[str], fields: Sequence[str], labels: Mapping[str, str]) -> None:
        """Resolve ``output`` and ``label`` against the model's outputs and the data's fields."""
        self.output = self._pick_output(self.output or None, outputs)
        self.label = self._pick_label(self.label or None, self.output, fields, labels)

    def _pick_output(self, output: Optional[str], outputs: Sequence[str]) -> str:
        if output is None:
            if len(outputs) != 1:
                raise MetricError(
                    f"metric {self.name!r}: the model has outputs {', '.join(outputs)}; say which with output=NAME"
                )
            return outputs[0]
        if output not in outputs:
            raise MetricError(
                f"metric {self.name!r}: output {output!r} is not one of the model's ({', '.join(outputs)})"
            )
        return output

    def _pick_label(
        self,
        label: Optional[str],
        output: str,
        fields: Sequence[str],
        labels: Mapping[str, str],
        fallback: str = "label",
    ) -> str:
        # An explicit label (option or mapping) is the only candidate: a typo must not fall back to another field.
        explicit = label if label is not None else labels.get(output)
        candidates = [explicit] if explicit is not None else [output, fallback]
        for candidate in candidates:
            if candidate is not None and candidate in fields:
                return candidate
        tried = ", ".join(filter(None, candidates))
        raise MetricError(
            f"metric {self.name!r}: no label field for output {output!r} (tried {tried}); "
            f"the data has {', '.join(fields) or 'no fields besides the inputs'}; map one with --labels {output}=FIELD"
        )

    def label_fields(self) -> List[str]:
        """The data fields this metric reads (after :meth:`bind`)."""
        return [self.label]

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def result(self) -> Dict[str, Any]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- classification


def _predicted_classes(prediction: np.ndarray, label: np.ndarray, name: str) -> np.ndarray:
    """Class ids: ``argmax`` over the last axis of scores, or the output itself when it already holds ids."""
    if prediction.ndim == label.ndim + 1:
        return prediction.argmax(axis=-1)
    if prediction.shape != label.shape:
        raise MetricError(
            f"metric {name!r}: prediction shape {list(prediction.shape)} fits neither label shape "
            f"{list(label.shape)} (class ids) nor that shape plus a class axis (scores)"
        )
    return prediction


def _option(name: str, option: str, value: Any, kind: Type[Union[int, float]]) -> Any:
    """An option given as text (``top_k:k=3``) or a number, as ``kind``; a MetricError naming it otherwise."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise MetricError(f"metric {name!r}: option {option} must be {kind.__name__}, got {value!r}") from None


def _class_ids(array: np.ndarray, what: str, name: str) -> np.ndarray:
    if array.dtype.kind not in "iub":
        if array.dtype.kind == "f" and np.array_equal(array, np.round(array)):
            return array.astype(np.int64)
        raise MetricError(f"metric {name!r}: {what} must hold integer class ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


class Accuracy(Metric):
    """Fraction of examples whose predicted class (argmax of scores, or the id output) equals the label."""

    def __init__(self, name: str = "accuracy", **options: Any) -> None:
        super().__init__(name, **options)
        self.correct = 0
        self.total = 0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        label = _class_ids(fields[self.label], "the label", self.name)
        predicted = _class_ids(_predicted_classes(outputs[self.output], label, self.name), "the prediction", self.name)
        self.correct += int(np.count_nonzero(predicted == label))
        self.total += label.size

    def result(self) -> Dict[str, Any]:
        return {"accuracy": self.correct / self.total if self.total else math.nan}


class TopK(Metric):
    """Fraction of examples whose label is among the ``k`` highest scores."""

    def __init__(self, name: str = "top_k", k: Union[int, str] = 5, **options: Any) -> None:
        super().__init__(name, **options)
        self.k = _option(name, "k", k, int)
        if self.k < 1:
            raise MetricError(f"metric {name!r}: k must be >= 1, got {k}")
        self.hits = 0
        self.total = 0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        scores, label = outputs[self.output], _class_ids(fields[self.label], "the label", self.name)
        if scores.ndim != label.ndim + 1:
            raise MetricError(f"metric {self.name!r}: needs scores with a class axis; got shape {list(scores.shape)}")
        k = min(self.k, scores.shape[-1])
        top = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
        self.hits += int(np.count_nonzero((top == label[..., np.newaxis]).any(axis=-1)))
        self.total += label.size

    def result(self) -> Dict[str, Any]:
        return {f"top_{self.k}_accuracy": self.hits / self.total if self.total else math.nan}


class ConfusionMatrix(Metric):
    """Counts of (label, predicted) pairs; precision, recall and F1 per class and macro-averaged."""

    #: Which of the values this metric reports (precision/recall/f1 report one each).
    keys: Tuple[str, ...] = ("precision", "recall", "f1", "confusion_matrix")

    def __init__(self, name: str = "confusion_matrix", **options: Any) -> None:
        super().__init__(name, **options)
        self.matrix = np.zeros((0, 0), np.int64)

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        label = _class_ids(fields[self.label], "the label", self.name).ravel()
        prediction = outputs[self.output]
        classes = prediction.shape[-1] if prediction.ndim == fields[self.label].ndim + 1 else 0
        predicted = _class_ids(
            _predicted_classes(prediction, fields[self.label], self.name), "the prediction", self.name
        )
        predicted = predicted.ravel()
        if label.size and min(label.min(), predicted.min()) < 0:
            raise MetricError(f"metric {self.name!r}: class ids must be >= 0")
        size = max(classes, int(label.max(initial=-1)) + 1, int(predicted.max(initial=-1)) + 1, len(self.matrix))
        if size > len(self.matrix):
            grown = np.zeros((size, size), np.int64)
            grown[: len(self.matrix), : len(self.matrix)] = self.matrix
            self.matrix = grown
        self.matrix += np.bincount(label * size + predicted, minlength=size * size).reshape(size, size)

    def per_class(self) -> Dict[str, List[float]]:
        matrix = self.matrix.astype(np.float64)
        true_positive = np.diag(matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(matrix.sum(0) > 0, true_positive / matrix.sum(0), 0.0)
            recall = np.where(matrix.sum(1) > 0, true_positive / matrix.sum(1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}

    def result(self) -> Dict[str, Any]:
        per_class = self.per_class()
        # Macro averages over the classes that occur (as labels or predictions).
        present = (self.matrix.sum(0) + self.matrix.sum(1)) > 0
        values: Dict[str, Any] = {}
        for key in ("precision", "recall", "f1"):
            if key in self.keys:
                scores = np.asarray(per_class[key])[present]
                values[key] = float(scores.mean()) if scores.size else math.nan
        if "confusion_matrix" in self.keys:
            values["confusion_matrix"] = self.matrix.tolist()
            values["per_class"] = per_class
        return values


def _one_of(key: str) -> Type[ConfusionMatrix]:
    return type(f"Macro{key.title()}", (ConfusionMatrix,), {"keys": (key,), "__doc__": f"Macro-averaged {key}."})


# ----------------------------------------------------------------------------- regression


class _Regression(Metric):
    """Running sums over every element; each metric computes only the sums it reports."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.count = 0

    def _error(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> np.ndarray:
        prediction = outputs[self.output]
        label = fields[self.label]
        if prediction.shape != label.shape:
            raise MetricError(
                f"metric {self.name!r}: output {self.output!r} has shape {list(prediction.shape)}, "
                f"label {self.label!r} {list(label.shape)}"
            )
        self.count += prediction.size
        # In the inputs' own float precision (float32 stays float32); the sums accumulate in float64.
        if prediction.dtype.kind != "f" or label.dtype.kind != "f":  # unsigned ints would wrap
            prediction, label = prediction.astype(np.float64), label.astype(np.float64)
        return (prediction - label).ravel()


class MAE(_Regression):
    def __init__(self, name: str = "mae", **options: Any) -> None:
        super().__init__(name, **options)
        self.abs_error = 0.0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        error = self._error(outputs, fields)
        self.abs_error += float(np.abs(error, out=error).sum(dtype=np.float64))

    def result(self) -> Dict[str, Any]:
        return {"mae": self.abs_error / self.count if self.count else math.nan}


class RMSE(_Regression):
    def __init__(self, name: str = "rmse", **options: Any) -> None:
        super().__init__(name, **options)
        self.squared_error = 0.0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        error = self._error(outputs, fields).astype(np.float64, copy=False)
        self.squared_error += float(np.dot(error, error))

    def result(self) -> Dict[str, Any]:
        return {"rmse": math.sqrt(self.squared_error / self.count) if self.count else math.nan}


class R2(_Regression):
    def __init__(self, name: str = "r2", **options: Any) -> None:
        super().__init__(name, **options)
        self.squared_error = 0.0
        self.label_sum = 0.0
        self.label_squares = 0.0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        error = self._error(outputs, fields).astype(np.float64, copy=False)
        truth = fields[self.label].astype(np.float64).ravel()
        self.squared_error += float(np.dot(error, error))
        self.label_sum += float(truth.sum())
        self.label_squares += float(np.dot(truth, truth))

    def result(self) -> Dict[str, Any]:
        if not self.count:
            return {"r2": math.nan}
        total = self.label_squares - self.label_sum**2 / self.count
        return {"r2": 1.0 - self.squared_error / total if total > 0 else math.nan}


# ----------------------------------------------------------------------------- strings


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), one row at a time."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


class ExactMatch(Metric):
    """Fraction of strings (or elements) equal to the label."""

    def __init__(self, name: str = "exact_match", **options: Any) -> None:
        super().__init__(name, **options)
        self.equal = 0
        self.total = 0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        prediction, label = _as_text(outputs[self.output]), _as_text(fields[self.label])
        self.equal += int(np.count_nonzero(prediction == label))
        self.total += label.size

    def result(self) -> Dict[str, Any]:
        return {"exact_match": self.equal / self.total if self.total else math.nan}


class CharacterErrorRate(Metric):
    """Total edit distance over the total length of the label strings."""

    def __init__(self, name: str = "cer", **options: Any) -> None:
        super().__init__(name, **options)
        self.edits = 0
        self.chars = 0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        prediction, label = _as_text(outputs[self.output]), _as_text(fields[self.label])
        if prediction.shape != label.shape:
            raise MetricError(f"metric {self.name!r}: output shape {list(prediction.shape)}, label {list(label.shape)}")
        for got, want in zip(prediction.ravel().tolist(), label.ravel().tolist()):
            self.edits += edit_distance(got, want)
            self.chars += len(want)

    def result(self) -> Dict[str, Any]:
        return {"cer": self.edits / self.chars if self.chars else math.nan}


def _as_text(array: np.ndarray) -> np.ndarray:
    return np.char.decode(array, "utf-8") if array.dtype.kind == "S" else array


# ----------------------------------------------------------------------------- detection


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of every ``[x1, y1, x2, y2]`` box in ``boxes`` (N, 4) with every one in ``others`` (M, 4)."""
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=-1)
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=-1)
    other_area = np.clip(others[:, 2:] - others[:, :2], 0, None).prod(axis=-1)
    union = area[:, None] + other_area[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


class Detection(Metric):
    """IoU-matched precision and recall, and mAP (all-point interpolated AP per class, averaged).

    Outputs per image: ``boxes`` (B, N, 4) as ``[x1, y1, x2, y2]``, ``scores``
    (B, N) and ``classes`` (B, N); labels ``gt_boxes`` (B, M, 4) and
    ``gt_classes`` (B, M). A class id < 0 marks padding. Each detection,
    highest score first, matches the unmatched ground-truth box of its class
    with the highest IoU >= ``iou``. Precision and recall count detections
    with score >= ``score_threshold``.
    """

    def __init__(
        self,
        name: str = "detection",
        boxes: str = "boxes",
        scores: str = "scores",
        classes: str = "classes",
        gt_boxes: Optional[str] = None,
        gt_classes: Optional[str] = None,
        iou: Union[float, str] = 0.5,
        score_threshold: Union[float, str] = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.names = {"boxes": boxes, "scores": scores, "classes": classes}
        self.gt = {"boxes": gt_boxes, "classes": gt_classes}
        self.iou = _option(name, "iou", iou, float)
        self.score_threshold = _option(name, "score_threshold", score_threshold, float)
        if not 0 < self.iou <= 1:
            raise MetricError(f"metric {name!r}: iou must be in (0, 1], got {iou!r}")
        self.detections: Dict[int, List[Tuple[float, bool]]] = {}
        self.ground_truths: Dict[int, int] = {}

    def bind(self, outputs: Sequence[str], fields: Sequence[str], labels: Mapping[str, str]) -> None:
        for output in self.names.values():
            self._pick_output(output, outputs)
        for key in ("boxes", "classes"):
            self.gt[key] = self._pick_label(self.gt[key], self.names[key], fields, labels, fallback=f"gt_{key}")

    def label_fields(self) -> List[str]:
        return [str(self.gt["boxes"]), str(self.gt["classes"])]

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        boxes, scores = outputs[self.names["boxes"]], outputs[self.names["scores"]]
        classes = outputs[self.names["classes"]].astype(np.int64, copy=False)
        gt_boxes = fields[str(self.gt["boxes"])]
        gt_classes = fields[str(self.gt["classes"])].astype(np.int64, copy=False)
        for image in range(len(boxes)):
            keep = classes[image] >= 0
            order = np.argsort(-scores[image][keep], kind="stable")
            det_boxes, det_scores = boxes[image][keep][order], scores[image][keep][order]
            det_classes = classes[image][keep][order]
            valid = gt_classes[image] >= 0
            truth_boxes, truth_classes = gt_boxes[image][valid], gt_classes[image][valid]
            for cls in truth_classes.tolist():
                self.ground_truths[cls] = self.ground_truths.get(cls, 0) + 1
            matched = np.zeros(len(truth_boxes), bool)
            ious = box_iou(det_boxes, truth_boxes) if len(det_boxes) and len(truth_boxes) else None
            for d, (cls, score) in enumerate(zip(det_classes.tolist(), det_scores.tolist())):
                hit = False
                if ious is not None:
                    candidates = np.where((truth_classes == cls) & ~matched, ious[d], -1.0)
                    best = int(candidates.argmax())
                    if candidates[best] >= self.iou:
                        matched[best] = hit = True
                self.detections.setdefault(cls, []).append((score, hit))

    def result(self) -> Dict[str, Any]:
        kept_hits = sum(hit for dets in self.detections.values() for s, hit in dets if s >= self.score_threshold)
        kept = sum(1 for dets in self.detections.values() for s, _ in dets if s >= self.score_threshold)
        truths = sum(self.ground_truths.values())
        precisions = []
        for cls, count in self.ground_truths.items():
            dets = sorted(self.detections.get(cls, []), key=lambda d: -d[0])
            hits = np.array([hit for _, hit in dets], bool)
            true_pos = np.cumsum(hits)
            recall = true_pos / count if len(dets) else np.zeros(0)
            precision = true_pos / np.arange(1, len(dets) + 1) if len(dets) else np.zeros(0)
            # All-point interpolation: precision made monotone, integrated over recall steps.
            envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
            steps = np.diff(np.concatenate([[0.0], recall]))
            precisions.append(float((steps * envelope[:-1]).sum()) if len(dets) else 0.0)
        return {
            "precision": kept_hits / kept if kept else math.nan,
            "recall": kept_hits / truths if truths else math.nan,
            "mAP": float(np.mean(precisions)) if precisions else math.nan,
        }


# ----------------------------------------------------------------------------- user callables


class CallableMetric(Metric):
    """A user function ``fn(prediction, label)`` returning a number per batch or one per example.

    Per-batch numbers are averaged weighted by the batch's examples; per-example
    arrays are averaged over every example.
    """

    def __init__(self, name: str, function: Callable[[np.ndarray, np.ndarray], Any], **options: Any) -> None:
        super().__init__(name, **options)
        self.function = function
        self.total = 0.0
        self.count = 0

    def update(self, outputs: Mapping[str, np.ndarray], fields: Mapping[str, np.ndarray]) -> None:
        label = fields[self.label]
        value = np.asarray(self.function(outputs[self.output], label), dtype=np.float64)
        if value.ndim == 0:
            rows = len(label) if label.ndim else 1
            self.total += float(value) * rows
            self.count += rows
        else:
            self.total += float(value.sum())
            self.count += value.size

    def result(self) -> Dict[str, Any]:
        return {self.name: self.total / self.count if self.count else math.nan}


_REGISTRY: Dict[str, Callable[..., Metric]] = {
    "accuracy": Accuracy,
    "top_k": TopK,
    "precision": _one_of("precision"),
    "recall": _one_of("recall"),
    "f1": _one_of("f1"),
    "confusion_matrix": ConfusionMatrix,
    "mae": MAE,
    "rmse": RMSE,
    "r2": R2,
    "exact_match": ExactMatch,
    "cer": CharacterErrorRate,
    "detection": Detection,
}


def register_metric(name: str, metric: Union[Type[Metric], Callable[[np.ndarray, np.ndarray], Any]]) -> None:
    """Make ``metric`` available by ``name`` (to ``evaluate(metrics=[name])`` and ``--metric name``).

    Args:
        name: the name, unique among metrics.
        metric: a :class:`Metric` subclass (built with ``name=`` and the
            options), or a function ``fn(prediction, label)`` returning a
            number for the batch or one per example.
    """
    if not isinstance(name, str) or not name:
        raise MetricError(f"register_metric: name must be a non-empty string, got {name!r}")
    if isinstance(metric, type) and issubclass(metric, Metric):
        _REGISTRY[name] = metric
    elif callable(metric):
        _REGISTRY[name] = lambda name=name, **options: CallableMetric(name, metric, **options)
    else:
        raise MetricError(f"register_metric({name!r}): expected a Metric subclass or a function, got {metric!r}")


def metric_names() -> List[str]:
    return sorted(_REGISTRY)


def parse_metric(text: str) -> Dict[str, Any]:
    """``"top_k:k=3,output=logits"`` -> ``{"name": "top_k", "k": "3", "output": "logits"}``."""
    name, _, rest = text.partition(":")
    entry: Dict[str, Any] = {"name": name.strip()}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MetricError(f"metric {text!r}: expected NAME[:KEY=VALUE,...], got {item!r}")
        entry[key.strip()] = value.strip()
    return entry


def make_metric(entry: Any) -> Metric:
    """Build a metric from a name, ``"name:key=value"``, a ``{"name": ..., options}`` dict, a callable or a Metric."""
    if isinstance(entry, Metric):
        return entry
    if callable(entry) and not isinstance(entry, type):
        return CallableMetric(getattr(entry, "__name__", "metric"), entry)
    if isinstance(entry, str):
        entry = parse_metric(entry)
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise MetricError(f"metric: expected a name, a dict with 'name' or a callable; got {entry!r}")
    options = dict(entry)
    name = options.pop("name")
    factory = _REGISTRY.get(name)
    if factory is None:
        raise MetricError(f"metric {name!r} is not known; known metrics: {', '.join(metric_names())}")
    try:
        return factory(name=name, **options)
    except TypeError as exc:
        raise MetricError(f"metric {name!r}: bad options {sorted(options)}: {exc}") from None
