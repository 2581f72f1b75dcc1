"""Image sources (also video clips and RGB-D, see :mod:`selfsup.data.video` and
:mod:`selfsup.data.rgbd`), the decode-once cache, and the deterministic DDP-aware batch loader;
streamed folders and WebDataset shards for data sets too large to cache
(:mod:`selfsup.data.training_data` chooses)."""

from selfsup.data.decode import DecodeSpec
from selfsup.data.loader import Batch, BatchLoader
from selfsup.data.shards import ShardLoader, ShardStream, write_shards
from selfsup.data.sources import (
    CACHE_FORMAT_VERSION,
    DEFAULT_FOLDER_IMAGE_SIZE,
    HOLDOUT_SEED,
    IMAGE_EXTENSIONS,
    LAYOUTS,
    ImageSource,
    balanced_subset_indices,
    default_cache_dir,
    default_data_root,
    holdout_split,
    list_datasets,
    load_source,
    random_subset_indices,
)
from selfsup.data.stream import FolderStream, FolderStreamLoader
from selfsup.data.training_data import make_loader, num_classes_of, open_training_source

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_FOLDER_IMAGE_SIZE",
    "HOLDOUT_SEED",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "Batch",
    "BatchLoader",
    "DecodeSpec",
    "FolderStream",
    "FolderStreamLoader",
    "ShardLoader",
    "ShardStream",
    "ImageSource",
    "balanced_subset_indices",
    "default_cache_dir",
    "default_data_root",
    "holdout_split",
    "list_datasets",
    "load_source",
    "make_loader",
    "num_classes_of",
    "open_training_source",
    "random_subset_indices",
    "write_shards",
]

# the clip and RGB-D source kinds register themselves with load_source
from selfsup.data import rgbd as _rgbd  # noqa: E402, F401
from selfsup.data import video as _video  # noqa: E402, F401
