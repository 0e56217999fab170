"""The training loop: recipe schemas, the LightningModule and config validation."""
