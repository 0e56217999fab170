"""Data: the generated default dataset, shard I/O and the Lightning datamodule."""
