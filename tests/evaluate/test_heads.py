"""Evaluating the representation after a method head (``--head projector``)."""

from __future__ import annotations

import torch

from selfsup.cli import main
from selfsup.evaluate import evaluate_encoder, load_encoder, load_encoder_with_head
from selfsup.evaluate.protocols import load_eval_data
from selfsup.models import load_method


def test_features_after_the_projector_are_the_heads_outputs(simclr_run):
    loaded = load_encoder_with_head(simclr_run, "projector")
    plain = load_encoder(str(simclr_run))
    method = load_method(simclr_run)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = method.projector(method.encoder(x))
        out = loaded.encoder.eval()(x)
    assert out.shape == (5, 12) and loaded.meta["feature_dim"] == 12
    torch.testing.assert_close(out, expected)
    # the encoder part is the trained encoder, and the cache key differs from the plain one
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder.encoder(x), plain.encoder.eval()(x))
    assert loaded.identity != plain.identity


def test_evaluate_with_a_head_and_a_clear_error_for_a_missing_one(simclr_run, tiny_npz, capsys):
    data = load_eval_data(str(tiny_npz))
    after = evaluate_encoder(str(simclr_run), data, protocols=("knn",), knn_k=(5,),
                             head="projector")  # fmt: skip
    before = evaluate_encoder(str(simclr_run), data, protocols=("knn",), knn_k=(5,))
    assert after["head"] == "projector" and after["feature_dim"] == 12
    assert before["feature_dim"] != 12 and "head" not in before
    code = main(["eval", "knn", str(simclr_run), "--data", str(tiny_npz), "--k", "5",
                 "--head", "predictor"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "no head 'predictor'" in err and "projector" in err
