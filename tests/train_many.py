"""Train several runs one after another in one process: ``python tests/train_many.py SPEC.json
[--float64]``, or the same under ``torchrun`` (every rank runs the same list).

SPEC is a JSON list of ``{"method", "overrides", "resume", "stop_at_step"}``. Tests comparing
1-process and 2-process runs of many methods use it to pay for a process start (and torch's
import) once per world size, not once per run.

``--float64`` trains every model in float64 (parameters, buffers and activations; the
augmented pictures stay float32 and are widened at the first convolution or linear layer).
In float32 the 1- and 2-process runs add the same numbers in different orders (a reduction
over 2 x 8 rows instead of 16, BatchNorm statistics summed per process then across), and a
few training steps amplify those last-bit differences to ~1e-4 in some weights. In float64
the same reordering leaves ~1e-15, so any larger difference is a real mismatch of the
distributed logic (statistics, gathers, random draws, gradient averaging), not rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def _train_in_float64() -> None:
    torch.set_default_dtype(torch.float64)  # parameters and buffers made from here on
    to = torch.Tensor.to
    # ``.float()`` is how the library widens activations (GlobalBatchNorm, losses): keep float64
    torch.Tensor.float = lambda self, *args, **kwargs: to(self, torch.float64)  # type: ignore[method-assign]
    for layer in (torch.nn.Conv2d, torch.nn.Linear):
        forward = layer.forward

        def widened(self, x, _forward=forward):
            return _forward(self, x.to(self.weight.dtype))

        layer.forward = widened  # type: ignore[method-assign]


def main(spec: Path, float64: bool) -> None:
    if float64:
        _train_in_float64()
    from selfsup.config import load_config
    from selfsup.train import Trainer

    for run in json.loads(spec.read_text()):
        cfg = load_config(run["method"], None, run["overrides"])
        Trainer(cfg, resume=run.get("resume", False), stop_at_step=run.get("stop_at_step")).fit()


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--float64" in sys.argv[2:])
