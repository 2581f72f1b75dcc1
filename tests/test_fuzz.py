"""Fuzzing with hypothesis: random ``key=value`` overrides give a valid config or a clear
ConfigError; random uint8 batches give every registered method finite outputs of the documented
shape or a clear error raised by selfsup itself; random bytes written as image files are
skipped and listed. Example counts are modest (the suite stays fast) and derandomized (every
run draws the same examples, so CI is repeatable; raise max_examples locally to search more)."""

from __future__ import annotations

import contextlib
import io
import traceback
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from selfsup.cli import main
from selfsup.config import RunConfig, load_config
from selfsup.data import load_source
from selfsup.errors import ConfigError
from selfsup.methods import get_method, list_methods
from selfsup.models import build_method

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


# ----------------------------------------------------------------------------- config overrides


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _dotted_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


KNOWN_KEYS = _dotted_keys(RunConfig) + [
    f"method_args.{k}" for k in get_method("simclr").Config.model_fields
]
AWKWARD_VALUES = ["null", "~", "[]", "{}", "[1, 2]", "{a: 1}", "-1", "0", "1e309", "-1e-9",
                  ".nan", "0x10", "yes", "'", '"', "{", "[[0, 16], [0.5, 8]]", "[[0.5, 8]]",
                  "&a [*a]", "!!python/object:os.system", "2020-01-01", "1:2", "{method}",
                  "runs/{", "simclr", "moco_v2", "sgd", "cifar10"]  # fmt: skip
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12),
                 st.sampled_from(KNOWN_KEYS).map(lambda k: k + "x"))  # fmt: skip
values = st.one_of(st.sampled_from(AWKWARD_VALUES), st.text(max_size=12),
                   st.integers(-10**12, 10**12).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))  # fmt: skip


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=4))
@example([("out_dir", "runs/{name}")])  # once a valid config that failed when used
@example([("out_dir", "runs/{")])
@example([("train.view_size_schedule", "[[0.5, 8]]"), ("method_args", "[1, 2]")])
@example([("method", "nope"), ("train", "5")])
def test_random_overrides_give_a_config_or_a_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config("simclr", None, overrides)
    except ConfigError as err:
        assert str(err).strip()
        return
    cfg.resolved_out_dir()  # a valid config is usable
    cfg.method_config()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_the_cli_answers_random_overrides_without_a_traceback(pairs):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["config", "simclr", *(f"{k}={v}" for k, v in pairs)])
    assert code in (0, 2) and "Traceback" not in err.getvalue()
    assert (code == 2) == bool(err.getvalue().strip())


# ----------------------------------------------------------------------------- methods


METHODS = [m.name for m in list_methods()]
SMALL = {  # per method: keep the networks tiny; MoCo v2's queue divides every batch size drawn
    "moco_v2": ["method_args.queue_size=120"],
}
SIZE = {"cpc": 32}  # its patch grid needs more rows than prediction steps; 16 px elsewhere


@cache
def _method(name: str, data_channels: int):
    recipe = {"inpainting": "inpainting_cifar10_cpu"}.get(name, f"{name}_cifar10_cpu")
    backbone = [] if name == "mae" else ["backbone.name=resnet_tiny", "backbone.width=null"]
    cfg = load_config(name, recipe, [*backbone, *SMALL.get(name, [])])
    torch.manual_seed(0)
    return build_method(cfg, SIZE.get(name, 16), data_channels, num_classes=4).train()


def _raised_by_selfsup(err: BaseException) -> bool:
    """A clear error: a ValueError raised by selfsup's own checks, not from deep in torch."""
    last = traceback.extract_tb(err.__traceback__)[-1].filename
    return isinstance(err, ValueError) and "selfsup" in last and "torch" not in last


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_random_uint8_batches_give_finite_outputs_or_a_clear_error(name, data):
    torch.set_num_threads(1)
    layout = get_method(name).data_layout
    if layout != "image":  # clips of 4 frames, RGB + packed depth: C is fixed by the layout
        built_for = {"clip": 12, "rgbd": 5}[layout]  # 3 reference frames + a target
    elif get_method(name).input_space != "rgb":
        built_for = 3
    else:
        built_for = data.draw(st.sampled_from([1, 3]))
    method = _method(name, built_for)
    n = data.draw(st.integers(1, 6), label="images")
    c = data.draw(st.sampled_from([built_for, built_for, 1, 2, 3, 4]), label="channels")
    h, w = data.draw(st.integers(8, 40), label="height"), data.draw(st.integers(8, 40))
    images = torch.randint(
        0,
        256,
        (n, c, h, w),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(n * 1000 + h * 40 + w),
    )
    labels = torch.arange(n) % 4 if method.uses_labels else None
    try:
        loss, metrics = method(images, labels, torch.Generator().manual_seed(0))
    except Exception as err:  # noqa: BLE001 - what matters is which
        assert _raised_by_selfsup(err), "".join(traceback.format_exception(err))[-1500:]
        # the batch shapes the method is documented to take never fail
        assert n < 2 or (c != built_for), f"{name} refused {tuple(images.shape)}: {err}"
        return
    assert loss.ndim == 0 and torch.isfinite(loss), loss
    for key, value in metrics.items():
        value = torch.as_tensor(value)
        assert value.numel() == 1 and torch.isfinite(value), (key, value)


# ----------------------------------------------------------------------------- image files


MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
         b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP", b"P6\n", b"\x00\x00\x00\x1cftypavif"]  # fmt: skip
blobs = st.tuples(st.sampled_from(MAGIC), st.binary(max_size=600)).map(lambda t: t[0] + t[1])


@FUZZ
@given(st.lists(st.tuples(blobs, st.sampled_from([".jpg", ".png", ".gif", ".tif", ".webp",
                                                   ".bmp", ".ppm", ".avif"])),
                min_size=1, max_size=4))  # fmt: skip
def test_random_bytes_as_image_files_are_skipped_and_listed(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("photos")
    from PIL import Image

    Image.new("RGB", (12, 12), (10, 120, 240)).save(folder / "good.png")
    for i, (data, ext) in enumerate(files):
        (folder / f"{i}{ext}").write_bytes(data)
    src = load_source(str(folder), image_size=8, cache_dir=str(tmp_path_factory.mktemp("c")))
    listed = [Path(p).name for p, _ in src.skipped]
    assert "good.png" not in listed and all(reason for _, reason in src.skipped)
    # every file is either an image (a random blob that happens to decode) or listed
    assert len(src) + len(listed) == len(files) + 1
