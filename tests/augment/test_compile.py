"""The augmentation stays out of ``torch.compile`` graphs (it draws from a Generator and picks
rows with data-dependent shapes): a compiled training step is one network graph that does not
recompile from step to step. Uses Dynamo's ``eager`` backend, so no code is generated."""

from __future__ import annotations

import torch
import torch._dynamo as dynamo

from selfsup.augment import build_pipeline
from selfsup.augment.masking import random_masking
from selfsup.config import load_config
from selfsup.models import build_method


def _simclr():
    cfg = load_config(
        "simclr",
        None,
        [
            "backbone.name=resnet_tiny",
            "method_args.proj_hidden_dim=32",
            "method_args.proj_out_dim=16",
        ],
    )
    torch.manual_seed(0)
    return build_method(cfg, 32, 3, None)


def test_compiled_simclr_step_is_few_graphs_and_never_recompiles():
    method = _simclr()
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    dynamo.reset()
    explained = dynamo.explain(method)(x, None, torch.Generator().manual_seed(0), None, 0)
    # Before the augmentation was excluded from compilation: 26 graphs, 25 breaks.
    assert explained.graph_count <= 3, explained.break_reasons

    dynamo.reset()
    compiled = torch.compile(method, backend="eager")
    losses = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(4):  # different flips/jitter row counts at every step
            loss, _ = compiled(x, None, torch.Generator().manual_seed(seed), None, 0)
            losses.append(loss)
    eager, _ = method(x, None, torch.Generator().manual_seed(3), None, 0)
    torch.testing.assert_close(losses[-1], eager)
    dynamo.reset()


def test_pipeline_and_masking_run_eagerly_inside_a_compiled_function():
    pipe = build_pipeline("simclr_cifar", 16)

    def step(x, g):
        view = pipe(x, g)
        ids_keep, mask, _ = random_masking(len(x), 16, 0.75, g)
        return view.mean() + mask.sum() + ids_keep.sum()

    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    dynamo.reset()
    compiled = torch.compile(step, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = [compiled(x, torch.Generator().manual_seed(s)) for s in range(3)]
    torch.testing.assert_close(out[-1], step(x, torch.Generator().manual_seed(2)))
    dynamo.reset()
