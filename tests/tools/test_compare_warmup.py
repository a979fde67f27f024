"""``compare`` warms each model before it times any call."""

from __future__ import annotations

from pathlib import Path

from neuropod import load_neuropod
from neuropod.packagers import create_placeholder_neuropod
from neuropod.tools import compare

SPEC = {
    "input_spec": [{"name": "x", "dtype": "float32", "shape": ["batch", 2]}],
    "output_spec": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
}


def test_each_model_makes_one_untimed_call_first(tmp_path: Path) -> None:
    models = [load_neuropod(create_placeholder_neuropod(tmp_path / name, name, **SPEC)) for name in ("a", "b")]
    calls = {model.name: 0 for model in models}
    for model in models:
        infer = model.infer

        def counted(inputs, *args, _infer=infer, _name=model.name, **kwargs):
            calls[_name] += 1
            return _infer(inputs, *args, **kwargs)

        model.infer = counted  # type: ignore[method-assign]
    try:
        result = compare(models, batch_size=2, batches=3, progress=False)
    finally:
        for model in models:
            model.close()
    assert calls == {"a": 4, "b": 4}  # the warm-up call, then one per batch
    assert all(len(latencies) == 3 for latencies in result.latencies_s.values())
