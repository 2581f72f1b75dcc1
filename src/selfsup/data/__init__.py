"""Image sources (also video clips and RGB-D, see :mod:`selfsup.data.video` and
:mod:`selfsup.data.rgbd`), the decode-once cache, and the deterministic DDP-aware batch loader.
"""

from selfsup.data.loader import Batch, BatchLoader
from selfsup.data.sources import (
    CACHE_FORMAT_VERSION,
    DEFAULT_FOLDER_IMAGE_SIZE,
    IMAGE_EXTENSIONS,
    LAYOUTS,
    ImageSource,
    balanced_subset_indices,
    default_cache_dir,
    default_data_root,
    list_datasets,
    load_source,
    random_subset_indices,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_FOLDER_IMAGE_SIZE",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "Batch",
    "BatchLoader",
    "ImageSource",
    "balanced_subset_indices",
    "default_cache_dir",
    "default_data_root",
    "list_datasets",
    "load_source",
    "random_subset_indices",
]
