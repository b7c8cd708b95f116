"""Training entry points, run from a clone: `python -m training.<name> --config training/configs/<file>.yaml`."""
