"""Conformance builders for TorchScript and torch.export.

TorchScript expresses every problem (strings are ``List[str]``);
torch.export has no string tensors, so ``strings`` and ``mixed`` are not
expressible there. No ``from __future__ import annotations`` here: TorchScript reads the annotations.
"""

from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from problems import PROBLEMS, problem_specs

from neuropod.packagers import create_torch_export_neuropod, create_torchscript_neuropod

try:  # TorchScript compiles from source: the modules must live at module level, so torch is imported here
    import torch
except ImportError:
    torch = None


if torch is not None:

    class Addition(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"out": x + y}

    class Strings(torch.nn.Module):
        def forward(self, a: List[str], b: List[str]) -> Dict[str, List[str]]:
            return {"out": [p + q for p, q in zip(a, b)]}

    class Mixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[str]]:
            labels: List[str] = []
            positives: List[bool] = (x > 0).tolist()
            for positive in positives:
                labels.append("pos" if positive else "neg")
            return x.sum().reshape(1), labels

    class Dtypes(torch.nn.Module):
        def forward(
            self, b: torch.Tensor, h: torch.Tensor, i: torch.Tensor, u: torch.Tensor
        ) -> Dict[str, torch.Tensor]:
            return {"nb": torch.logical_not(b), "h2": h * 2, "i2": i + 1, "u2": u + 1}  # uint8 wraps in torch

    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {"out": x}

    MODULES: Dict[str, Any] = {
        "addition": Addition,
        "strings": Strings,
        "mixed": Mixed,
        "dtypes": Dtypes,
        "identity_big": Identity,
    }


class TorchScriptBuilder:
    platform = "torchscript"

    def build(self, path: Path, problem: str) -> Path:
        input_spec, output_spec = problem_specs(problem)
        return create_torchscript_neuropod(
            neuropod_path=path,
            model_name=f"torchscript_{problem}",
            module=torch.jit.script(MODULES[problem]()),
            input_spec=input_spec,
            output_spec=output_spec,
            default_input_tensor_device="CPU",
        )


class TorchExportBuilder:
    platform = "torch_export"

    def build(self, path: Path, problem: str) -> Path:
        if problem in ("strings", "mixed"):
            raise NotImplementedError(f"torch.export has no string tensors, which {problem!r} needs")
        input_spec, output_spec = problem_specs(problem)
        examples = PROBLEMS[problem].make_inputs(4, np.random.default_rng(0))
        return create_torch_export_neuropod(
            neuropod_path=path,
            model_name=f"torch_export_{problem}",
            module=MODULES[problem](),
            example_inputs=examples,
            input_spec=input_spec,
            output_spec=output_spec,
            default_input_tensor_device="CPU",
        )


BUILDERS = {"torchscript": TorchScriptBuilder(), "torch_export": TorchExportBuilder()}
