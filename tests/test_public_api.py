"""``selfsup``'s small public API: every name resolves, says its shapes, and costs nothing to
import until used."""

import subprocess
import sys

import pytest

import selfsup

SHAPED = ["build_backbone", "build_pipeline", "ProjectionHead", "info_nce", "nt_xent", "Method",
          "get_method", "LoadedEncoder", "load_encoder", "load_eval_data",
          "evaluate_encoder"]  # fmt: skip


@pytest.mark.parametrize("name", [n for n in selfsup.__all__ if n != "__version__"])
def test_every_public_name_resolves_with_a_docstring(name):
    value = getattr(selfsup, name)
    assert value.__doc__ and len(value.__doc__.strip()) > 20, name
    if name in SHAPED:
        assert "(N" in value.__doc__ or "(n," in value.__doc__, f"{name}: no shapes given"


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        selfsup.nope  # noqa: B018


def test_import_is_lazy():
    code = "import sys, selfsup; print('torch' in sys.modules, selfsup.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"


def test_the_readme_library_example_runs():
    import torch

    encoder = selfsup.build_backbone("resnet_tiny")
    head = selfsup.ProjectionHead(encoder.feature_dim, 32, 16)
    views = selfsup.build_pipeline("simclr_cifar", size=16)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    z1, z2 = head(encoder(views(images, g))), head(encoder(views(images, g)))
    assert z1.shape == (8, 16)
    loss = selfsup.nt_xent(z1, z2, temperature=0.5)
    assert loss.ndim == 0 and torch.isfinite(loss)
