"""OVSNet in JAX/Flax: open-vocabulary segmentation with Gradient-Free Aggregation and Proxy Calibration."""
__version__ = "0.1.0"
