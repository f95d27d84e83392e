"""TwHIN's model: one torchrec table per entity type, relation vectors, scores and loss."""
