"""Built-in metrics against values worked out by hand, and user metrics registered by name."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
import pytest

from neuropod.errors import MetricError
from neuropod.tools import register_metric
from neuropod.tools.metrics import edit_distance, make_metric


def run(entry: Any, batches: List[Dict[str, Dict[str, np.ndarray]]], outputs: List[str]) -> Dict[str, Any]:
    metric = make_metric(entry)
    first = batches[0]
    metric.bind(outputs, list(first["fields"]), {})
    for batch in batches:
        metric.update(batch["outputs"], batch["fields"])
    return metric.result()


SCORES = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.25, 0.35, 0.4], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], np.float32)
TRUTH = np.array([1, 0, 1, 2, 0])  # predicted: 1, 0, 2, 1, 0 -> 3 of 5 right


def classification(split: int = 2) -> List[Dict[str, Dict[str, np.ndarray]]]:
    return [
        {"outputs": {"scores": SCORES[:split]}, "fields": {"label": TRUTH[:split]}},
        {"outputs": {"scores": SCORES[split:]}, "fields": {"label": TRUTH[split:]}},
    ]


def test_accuracy_top_k_and_confusion() -> None:
    assert run("accuracy", classification(), ["scores"]) == {"accuracy": 0.6}
    # Top 2: rows 2 and 3 (their labels score second) now count too: 5 of 5.
    assert run("top_k:k=2", classification(), ["scores"]) == {"top_2_accuracy": 1.0}
    result = run("confusion_matrix", classification(), ["scores"])
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 1, 0]]
    # precision per class: 2/2, 1/2, 0/1; recall: 2/2, 1/2, 0/1
    assert result["per_class"]["precision"] == [1.0, 0.5, 0.0]
    assert result["precision"] == pytest.approx(0.5)
    assert run("recall", classification(), ["scores"]) == {"recall": pytest.approx(0.5)}
    assert run("f1", classification(), ["scores"]) == {"f1": pytest.approx(0.5)}


def test_class_id_outputs_and_a_growing_matrix() -> None:
    batches = [
        {"outputs": {"cls": np.array([0, 1])}, "fields": {"cls": np.array([0, 0])}},
        {"outputs": {"cls": np.array([3])}, "fields": {"cls": np.array([3])}},
    ]
    assert run("accuracy", batches, ["cls"]) == {"accuracy": pytest.approx(2 / 3)}
    matrix = run("confusion_matrix", batches, ["cls"])["confusion_matrix"]
    assert len(matrix) == 4 and matrix[0][:2] == [1, 1] and matrix[3][3] == 1


def test_regression() -> None:
    prediction, truth = np.array([1.0, 2.0, 4.0], np.float32), np.array([1.0, 3.0, 2.0], np.float32)
    batches = [{"outputs": {"y": prediction}, "fields": {"y": truth}}]
    assert run("mae", batches, ["y"]) == {"mae": pytest.approx(1.0)}
    assert run("rmse", batches, ["y"]) == {"rmse": pytest.approx(math.sqrt(5 / 3))}
    # R² = 1 - SSE / SST: SSE = 0 + 1 + 4, SST = 1 + 1 + 0 (the labels' mean is 2)
    assert run("r2", batches, ["y"]) == {"r2": pytest.approx(1 - 5 / 2)}
    unsigned = [{"outputs": {"y": np.array([0], np.uint8)}, "fields": {"y": np.array([255], np.uint8)}}]
    assert run("mae", unsigned, ["y"]) == {"mae": 255.0}  # no uint8 wrap-around


def test_strings() -> None:
    batches = [
        {
            "outputs": {"text": np.array(["kitten", "héllo", "same"])},
            "fields": {"text": np.array(["sitting", "hello", "same"])},
        }
    ]
    assert edit_distance("kitten", "sitting") == 3
    assert run("exact_match", batches, ["text"]) == {"exact_match": pytest.approx(1 / 3)}
    assert run("cer", batches, ["text"]) == {"cer": pytest.approx((3 + 1 + 0) / (7 + 5 + 4))}


def test_detection_matches_by_iou_and_class() -> None:
    pad = [-1.0] * 4
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.3]], np.float32)
    classes = np.array([[1, 1, 2]])
    gt_boxes = np.array([[[1, 1, 10, 10], [50, 50, 60, 60], pad]], np.float32)
    gt_classes = np.array([[1, 1, -1]])
    batches = [
        {
            "outputs": {"boxes": boxes, "scores": scores, "classes": classes},
            "fields": {"gt_boxes": gt_boxes, "gt_classes": gt_classes},
        }
    ]
    result = run("detection", batches, ["boxes", "scores", "classes"])
    # Score >= 0.5: two detections of class 1, one matches (IoU 0.81) -> precision 1/2; recall 1 of 2 truths.
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    # Class 1 AP: hit then miss over 2 truths = 0.5; class 2 has no truth and does not count.
    assert result["mAP"] == pytest.approx(0.5)


def test_user_metric_registered_by_name() -> None:
    register_metric("within_one", lambda prediction, label: np.abs(prediction - label) <= 1)
    batches = [
        {"outputs": {"y": np.array([1.0, 5.0])}, "fields": {"y": np.array([1.5, 1.0])}},
        {"outputs": {"y": np.array([0.0])}, "fields": {"y": np.array([0.0])}},
    ]
    assert run("within_one", batches, ["y"]) == {"within_one": pytest.approx(2 / 3)}
    # A function returning one number per batch is weighted by the batch's examples.
    register_metric("batch_mean", lambda prediction, label: float(np.mean(prediction)))
    assert run("batch_mean", batches, ["y"]) == {"batch_mean": pytest.approx((3.0 * 2 + 0.0) / 3)}


def test_metric_errors_say_what_to_do() -> None:
    with pytest.raises(MetricError, match="'nope' is not known; known metrics: accuracy"):
        make_metric("nope")
    metric = make_metric("accuracy")
    with pytest.raises(MetricError, match="outputs a, b; say which with output=NAME"):
        metric.bind(["a", "b"], ["label"], {})
    with pytest.raises(MetricError, match="no label field for output 'a'.*--labels a=FIELD"):
        make_metric("mae").bind(["a"], ["other"], {})
    with pytest.raises(MetricError, match="unknown option"):
        make_metric("mae:colour=red")


def test_bad_option_values_and_non_class_data_are_named() -> None:
    with pytest.raises(MetricError, match=r"metric 'top_k': option k must be int, got 'abc'"):
        make_metric("top_k:k=abc")
    with pytest.raises(MetricError, match=r"metric 'detection': option iou must be float, got 'high'"):
        make_metric("detection:iou=high")
    with pytest.raises(MetricError, match=r"iou must be in \(0, 1\]"):
        make_metric("detection:iou=2")
    # Accuracy over a regression output: refused, not a silent 0.
    regression = [{"outputs": {"out": np.array([[0.3, 1.7]])}, "fields": {"out": np.array([[0.0, 2.0]])}}]
    with pytest.raises(MetricError, match="accuracy.*the prediction must hold integer class ids, got dtype float64"):
        run("accuracy", regression, ["out"])
