"""The training loop: recipe schemas, the LightningModule and the recipe checks."""
