"""gather_no_grad: every process gets the same concatenation, in rank order, without grad."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.utils.distributed import gather_no_grad


def test_single_process_returns_a_detached_tensor():
    x = torch.randn(3, 4, requires_grad=True)
    out = gather_no_grad(x)
    assert torch.equal(out, x) and not out.requires_grad


def _worker(rank: int, world: int, init_file: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = torch.full((2, 3), float(rank), requires_grad=True) + torch.arange(3.0)
        out = gather_no_grad(x)
        results[rank] = (out.tolist(), out.requires_grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_gather_in_rank_order(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    expected = [[0.0, 1.0, 2.0]] * 2 + [[1.0, 2.0, 3.0]] * 2
    assert results[0] == results[1] == (expected, False)


def test_global_batchnorm_conversion_keeps_frozen_parameters_frozen():
    """A frozen BN (in an EMA copy) must not become trainable: DDP would then wait for its
    gradients and fail at the second step."""
    from torch import nn

    from selfsup.utils.distributed import GlobalBatchNorm, convert_sync_batchnorm

    model = nn.ModuleDict({"online": nn.BatchNorm1d(4), "frozen": nn.BatchNorm1d(4)})
    model["frozen"].requires_grad_(False)
    out = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(out["online"], GlobalBatchNorm) and isinstance(out["frozen"], GlobalBatchNorm)
    assert all(p.requires_grad for p in out["online"].parameters())
    assert not any(p.requires_grad for p in out["frozen"].parameters())
