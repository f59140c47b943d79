"""Dataset readers, grain pipelines and numpy transforms."""

# Label value for "not evaluated / not trained on" in every label map the readers return (int32).
IGNORE_LABEL = -1
