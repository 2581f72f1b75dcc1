"""Pretraining with the evaluation a run config asks for along the way.

:class:`~selfsup.train.Trainer` knows nothing about evaluation and :mod:`selfsup.evaluate`
nothing about training; this module, above both, joins them: :class:`OnlineKnn` is the
callback behind ``train.knn_monitor``, and :func:`pretrain` is the trainer with it wired in —
what ``selfsup train``, the quickstart and sweeps run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from selfsup.config import RunConfig
from selfsup.evaluate.features import EVAL_PRECISION, extract_features, input_spec
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.protocols import EvalData, load_eval_data
from selfsup.train import Callback, StepOutput, Trainer, TrainingRun, TrainResult


class OnlineKnn(Callback):
    """kNN accuracy of the current encoder on the run's labeled ``eval_data`` every
    ``train.knn_monitor.every_epochs`` epochs (main process only; 0 turns it off), logged as
    ``online_knn@K`` and printed.

    Images are prepared as the encoder sees them (its ``encoder.json`` meta: channels, input
    space, normalisation); the bank is ``eval_data``'s train split, the queries its test split.
    Features are computed in fp32 whatever ``train.precision`` is, as every evaluation
    protocol does (:data:`selfsup.evaluate.features.EVAL_PRECISION`).
    """

    serves = "train.knn_monitor"

    def __init__(self) -> None:
        self.every = 0
        self.data: EvalData | None = None

    def on_fit_start(self, run: TrainingRun) -> None:
        cfg = run.cfg
        every = cfg.train.knn_monitor.every_epochs * run.steps_per_epoch
        self.every = every if run.is_main and 0 < every <= run.total_steps else 0
        if not self.every:
            return
        e = cfg.eval_data
        self.data = load_eval_data(
            e.source or cfg.data.source,
            train_split=e.train_split,
            test_split=e.test_split,
            root=cfg.data.root,
            image_size=cfg.data.image_size,
            train_subset=e.train_subset,
            test_subset=e.test_subset,
            seed=cfg.seed,
        )

    def on_step_end(self, run: TrainingRun, out: StepOutput) -> None:
        if not self.every or run.step % self.every:
            return
        result = self.measure(run)
        run.log({"step": run.step, "epoch": run.epoch, **result})
        run.write(f"step {run.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
        run.model.train()

    def measure(self, run: TrainingRun) -> dict[str, float]:
        """``{"online_knn@K": top-1}`` of ``run.method.encoder`` now."""
        assert self.data is not None
        # EVAL_PRECISION: the number `selfsup eval knn` gives, on any CPU
        kw = dict(**input_spec(run.encoder_meta), device=run.device, precision=EVAL_PRECISION)
        encoder = run.method.encoder
        train = extract_features(encoder, self.data.train, **kw)  # type: ignore[arg-type]
        test = extract_features(encoder, self.data.test, **kw)  # type: ignore[arg-type]
        monitor = run.cfg.train.knn_monitor
        result = knn_accuracy(
            train,
            torch.as_tensor(self.data.train.labels),
            test,
            torch.as_tensor(self.data.test.labels),
            ks=(monitor.k,),
            temperature=monitor.temperature,
            num_classes=self.data.num_classes,
        )
        return {f"online_{key}": value for key, value in result.items()}


def pretrain(
    cfg: RunConfig,
    *,
    resume: bool = False,
    stop_at_step: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``cfg``'s method on its data (:class:`~selfsup.train.Trainer`) with the online kNN
    monitor of ``train.knn_monitor`` and then ``callbacks``; returns the run's
    :class:`~selfsup.train.TrainResult` (run directory, steps, final loss, encoder path).

    ``resume`` continues the run in ``cfg.out_dir`` from its last checkpoint;
    ``stop_at_step`` checkpoints and stops early (``resume`` continues it exactly).
    """
    trainer = Trainer(
        cfg, resume=resume, stop_at_step=stop_at_step, callbacks=[OnlineKnn(), *callbacks]
    )
    return trainer.fit()
