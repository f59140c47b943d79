"""OVSNet in JAX/Flax: open-vocabulary segmentation with Gradient-Free Aggregation and Proxy Calibration."""
__version__ = "0.1.0"


def __getattr__(name):  # `ovsnet_jax.Segmenter` without importing jax at package import
  if name == 'Segmenter':
    from ovsnet_jax.segmenter import Segmenter  # pylint: disable=g-import-not-at-top
    return Segmenter
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
