"""nightrec: the logic of the nightly recommendation pipeline, one module per step."""
