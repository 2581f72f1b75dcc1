import pytest

from selfsup.config import ConfigError, dump_config, list_recipes, load_config


def test_recipes_load_and_overrides_apply():
    assert {"simclr_default", "simclr_cifar10_cpu", "supervised_default"} <= set(list_recipes())
    cfg = load_config(
        "simclr",
        "simclr_cifar10_cpu",
        ["train.epochs=2", "train.optimizer.lr=1e-3", "backbone.width=0.25"],
    )
    assert cfg.train.epochs == 2
    assert cfg.train.optimizer.lr == pytest.approx(1e-3)
    assert cfg.backbone.width == 0.25
    assert cfg.method_config().temperature == 0.2
    assert "batch_size" in dump_config(cfg)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.batchsize=3", "train.batchsize: unknown key; did you mean 'train.batch_size'"),
        ("trian.epochs=3", "trian: unknown key; did you mean 'train'"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.optimizer.lr=-1", "train.optimizer.lr: Input should be greater than 0"),
        ("train.precision=fp8", "train.precision"),
        ("method_args.temprature=0.1", "did you mean 'method_args.temperature'"),
        ("method_args.temperature=0", "method_args.temperature"),
    ],
)
def test_bad_config_names_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("simclr", None, [override])
    assert expected in str(err.value)


def test_unknown_method_and_recipe_suggest_names():
    with pytest.raises(ConfigError, match="did you mean 'simclr'"):
        load_config("simclar")
    with pytest.raises(ConfigError, match="did you mean 'simclr_default'"):
        load_config("simclr", "simclr_defautl")


def test_recipe_for_another_method_is_rejected():
    with pytest.raises(ConfigError, match="recipe for method 'supervised'"):
        load_config("simclr", "supervised_default")


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("simclr", None, ["train.epochs"])


def test_yaml_file_with_unknown_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: simclr\ntrain:\n  epochs: 1\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"train\.warmup: unknown key"):
        load_config(None, str(path))
