"""The `radio` command line (the only place that imports `eval`)."""
