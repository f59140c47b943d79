"""Hungarian matching, set criterion and Proxy Calibration."""
from ovsnet_jax.losses.total import total_loss  # noqa: F401
