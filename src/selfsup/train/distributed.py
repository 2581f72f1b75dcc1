"""Deprecated alias of :mod:`selfsup.utils.distributed` (for callers above ``train``; code in
lower layers, methods included, imports :mod:`selfsup.utils.distributed`)."""

from selfsup.utils.distributed import (  # noqa: F401
    GlobalBatchNorm,
    all_reduce_mean,
    barrier,
    convert_sync_batchnorm,
    gather_no_grad,
    gather_with_grad,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    local_device,
)
