"""Hungarian matching, set criterion and Proxy Calibration."""
