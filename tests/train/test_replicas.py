"""``train.cpu_replicas``: a batch's shards run forward and backward in parallel threads."""

import threading

import pytest
import torch
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.models import build_method
from selfsup.train import Trainer
from selfsup.train.replicas import CPUReplicas, replica_seed, replicate

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "backbone.name=resnet_tiny",
    "method_args.proj_hidden_dim=32",
    "method_args.proj_out_dim=16",
]


def tiny_method(name="simclr", *extra):
    torch.manual_seed(0)
    cfg = load_config(name, None, [*TINY, *extra])
    method = build_method(cfg, 16, 3, None)
    return method.train()


def batch(n=12, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def bn_means(method):
    return [
        m.running_mean.clone()
        for m in method.modules()
        if isinstance(m, torch.nn.modules.batchnorm._NormBase)
    ]


def test_shards_in_threads_give_what_the_same_shards_give_one_after_the_other():
    method = tiny_method()
    reference = tiny_method()  # equal initial weights (same seed), parameters of its own
    images = batch(12)

    replicas = CPUReplicas(method, 3, threads=1)
    loss, metrics = replicas.forward_backward(images, None, step_seed=123, amp_dtype=None)
    replicas.close()

    shard_losses, shard_means = [], []
    for k, shard in enumerate(torch.tensor_split(images, 3)):
        one = replicate(reference)
        generator = torch.Generator().manual_seed(replica_seed(123, k))
        shard_loss, _ = one(shard, None, generator)
        (shard_loss * len(shard) / len(images)).backward()
        shard_losses.append(shard_loss.detach())
        shard_means.append(bn_means(one))

    assert torch.allclose(loss, torch.stack(shard_losses).mean(), atol=1e-6)
    assert "positive_cosine" in metrics
    for p, q in zip(method.parameters(), reference.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), "gradients differ"
    # the method's BatchNorm statistics are the shards' mean, and every replica holds them
    expected = [torch.stack(ms).mean(0) for ms in zip(*shard_means, strict=True)]
    for got, want in zip(bn_means(method), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    for copy in replicas.copies:
        for a, b in zip(bn_means(copy), bn_means(method), strict=True):
            assert torch.equal(a, b)
    # replicas share the parameters themselves, not copies of them
    assert all(
        p is q for p, q in zip(method.parameters(), replicas.copies[0].parameters(), strict=True)
    )


def test_shard_zero_draws_what_a_single_replica_draws():
    assert replica_seed(987, 0) == 987
    assert len({replica_seed(987, k) for k in range(4)}) == 4


def test_workers_compute_with_their_own_thread_count_and_the_caller_keeps_its_own():
    method = tiny_method()
    torch.set_num_threads(2)
    replicas = CPUReplicas(method, 2, threads=1)
    seen = []

    def record(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads()))

    method.register_forward_pre_hook(record)
    replicas.forward_backward(batch(8), None, step_seed=0, amp_dtype=None)
    replicas.close()
    assert {threads for _, threads in seen} == {1}
    assert all(name.startswith("selfsup-replica") for name, _ in seen)
    assert torch.get_num_threads() == 2


def test_view_size_changes_reach_every_replica():
    method = tiny_method()
    replicas = CPUReplicas(method, 2, threads=1)
    replicas.forward_backward(batch(8), None, step_seed=0, amp_dtype=None)
    replicas.set_view_size(8)
    g = torch.Generator().manual_seed(0)
    for m in replicas.methods:
        assert m.views(batch(4), g, None, 0).shape[-2:] == (8, 8)
    replicas.close()


def test_too_small_a_batch_for_the_shards_is_refused():
    replicas = CPUReplicas(tiny_method(), 2, threads=1)
    with pytest.raises(ValueError, match="shards of at least 2 images; got a batch of 3"):
        replicas.forward_backward(batch(3), None, step_seed=0, amp_dtype=None)


COMMON = [
    *TINY,
    "train.batch_size=16",
    "train.epochs=2",
    "train.precision=fp32",
    "train.progress=false",
    "train.tensorboard=false",
    "train.num_threads=2",
    "train.cpu_replicas=2",
    "train.checkpoint_every_steps=2",
    "train.knn_monitor.every_epochs=0",
]


def run_cfg(data, out_dir, *extra, method="simclr"):
    return load_config(method, None, [f"data.source={data}", f"out_dir={out_dir}", *COMMON, *extra])


def test_a_run_with_replicas_trains_reproducibly_and_resumes_exactly(tiny_npz, tmp_path):
    straight = Trainer(run_cfg(tiny_npz, tmp_path / "a")).fit()
    assert straight.steps == 8
    assert torch.get_num_threads() == 2  # the trainer's setting, not the workers'
    again = tmp_path / "b"
    Trainer(run_cfg(tiny_npz, again), stop_at_step=3).fit()
    Trainer(run_cfg(tiny_npz, again), resume=True).fit()
    a = load_file(str(tmp_path / "a" / "encoder.safetensors"))
    b = load_file(str(again / "encoder.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the straight one"
    initial = tiny_method().encoder.state_dict()
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], initial[k])]
    assert any("running_mean" in k for k in moved) and any("weight" in k for k in moved)


def test_two_replicas_train_another_run_than_one_with_the_same_encoder_shapes(tiny_npz, tmp_path):
    one = Trainer(run_cfg(tiny_npz, tmp_path / "one", "train.cpu_replicas=1")).fit()
    two = Trainer(run_cfg(tiny_npz, tmp_path / "two")).fit()
    assert one.steps == two.steps == 8
    a = load_file(str(tmp_path / "one" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "two" / "encoder.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("moco_v2", [], r"moco_v2 keeps state that changes every step .* simclr"),
        ("simclr", ["train.compile=true"], "set train.compile=false"),
    ],
)
def test_settings_replicas_cannot_serve_are_refused_before_anything_is_written(
    tiny_npz, tmp_path, method, extra, message
):
    out = tmp_path / "run"
    args = [a for a in COMMON if not a.startswith("method_args")] if method != "simclr" else COMMON
    cfg = load_config(method, None, [f"data.source={tiny_npz}", f"out_dir={out}", *args, *extra])
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg).fit()
    assert not (out / "checkpoints").exists()


def test_the_option_is_ignored_off_the_cpu(tiny_npz, tmp_path):
    trainer = Trainer(run_cfg(tiny_npz, tmp_path / "run"))
    method = tiny_method()
    assert trainer._replicas(method, torch.device("cuda"), 1) is None
    assert isinstance(trainer._replicas(method, torch.device("cpu"), 1), CPUReplicas)
    with pytest.raises(ConfigError, match="runs in one process; this run has 2"):
        trainer._replicas(method, torch.device("cpu"), 2)
