"""OpenBench construction and vocabulary-similarity statistics (paper Section 3)."""
