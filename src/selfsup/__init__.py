"""selfsup: self-supervised pretraining of image encoders, and the evaluation to judge them.

The stable public API (each name's docstring gives its shapes)::

    import selfsup

    # building blocks for a plain PyTorch loop
    encoder = selfsup.build_backbone("resnet18", stem="cifar")   # (N, 3, 32, 32) -> (N, 512)
    views = selfsup.build_pipeline("simclr_cifar", size=32)      # uint8 (N, C, H, W) -> float
    head = selfsup.ProjectionHead(encoder.feature_dim, 2048, 128)  # (N, 512) -> (N, 128)
    loss = selfsup.nt_xent(z1, z2, temperature=0.5)              # (N, D), (N, D) -> scalar

    # a whole run, an encoder, an evaluation
    cfg = selfsup.load_config("simclr", "simclr_cifar10_cpu", ["train.epochs=1"])
    result = selfsup.pretrain(cfg)                               # -> TrainResult
    loaded = selfsup.load_encoder(str(result.run_dir))           # .encoder: (N, C, S, S) -> (N, D)
    data = selfsup.load_eval_data("cifar10", test_subset=2000)
    print(selfsup.evaluate_encoder(str(result.run_dir), data))   # {"knn@200": ..., ...}

Names are imported on first use, so ``import selfsup`` stays cheap. The functions are
``pretrain`` and ``evaluate_encoder`` rather than ``train``/``evaluate`` because those are the
subpackages :mod:`selfsup.train` and :mod:`selfsup.evaluate`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from selfsup._version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from selfsup.augment import build_pipeline as build_pipeline
    from selfsup.backbones import build_backbone as build_backbone
    from selfsup.config import RunConfig as RunConfig
    from selfsup.config import load_config as load_config
    from selfsup.evaluate import EvalData as EvalData
    from selfsup.evaluate import evaluate_encoder as evaluate_encoder
    from selfsup.evaluate import load_eval_data as load_eval_data
    from selfsup.heads import ProjectionHead as ProjectionHead
    from selfsup.losses import info_nce as info_nce
    from selfsup.losses import nt_xent as nt_xent
    from selfsup.methods import Method as Method
    from selfsup.methods import get_method as get_method
    from selfsup.methods import list_methods as list_methods
    from selfsup.models import LoadedEncoder as LoadedEncoder
    from selfsup.models import load_encoder as load_encoder
    from selfsup.models.pretrained import Encoder as Encoder
    from selfsup.pretraining import pretrain as pretrain
    from selfsup.train import Trainer as Trainer
    from selfsup.train import TrainResult as TrainResult

_WHERE = {
    # building blocks
    "build_backbone": "selfsup.backbones",
    "build_pipeline": "selfsup.augment",
    "ProjectionHead": "selfsup.heads",
    "info_nce": "selfsup.losses",
    "nt_xent": "selfsup.losses",
    "Method": "selfsup.methods",
    "get_method": "selfsup.methods",
    "list_methods": "selfsup.methods",
    # runs
    "RunConfig": "selfsup.config",
    "load_config": "selfsup.config",
    "pretrain": "selfsup.pretraining",
    "Trainer": "selfsup.train",
    "TrainResult": "selfsup.train",
    # encoders and evaluation
    "Encoder": "selfsup.models.pretrained",  # selfsup.Encoder.from_pretrained(...)
    "LoadedEncoder": "selfsup.models",
    "load_encoder": "selfsup.models",
    "EvalData": "selfsup.evaluate",
    "load_eval_data": "selfsup.evaluate",
    "evaluate_encoder": "selfsup.evaluate",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
