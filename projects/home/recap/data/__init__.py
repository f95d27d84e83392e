"""Data of the ranker: schema, Parquet format, file selection, preprocessing and the loader.

Modules, in data-flow order: ``config`` (the data config), ``schema`` (the segdense schema file),
``features`` (what a config reads, the model's input widths), ``files`` (which files),
``parquet_format`` (the on-disk format), ``preprocess`` (the steps), ``embedding_ids`` (large
embedding rows), ``pipeline`` (ordered thread-parallel map), ``dataset`` (the per-rank loader,
``build_dataset``), ``batch`` (``RecapBatch``), ``generate_random_data`` (synthetic data).
Nothing is imported here, so that importing the config stays light.
"""
