"""The bottom layer: helpers every other part may use and that import nothing from selfsup
but :mod:`selfsup.errors` and :mod:`selfsup._version`.

- :mod:`selfsup.utils.allocator`: keep freed memory in the process while training on the CPU
  (glibc).
- :mod:`selfsup.utils.distributed`: process group, rank/world, gathers with and without
  gradient, all-reduce mean, global-batch BatchNorm.
- :mod:`selfsup.utils.io`: safetensors weights, JSON, checkpoints and the run-directory layout.
- :mod:`selfsup.utils.precision`: autocast dtype and channels_last for a device.
"""
