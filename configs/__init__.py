"""ml-collections configs for `python -m experiments.run --config configs/<name>.py`."""
