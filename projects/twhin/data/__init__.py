"""TwHIN's data stage: Parquet edge files, their per-rank loader and a planted-graph generator."""
