"""Data of the ranker: schema, file format, file selection, preprocessing and the loader.

Modules, in data-flow order: ``config`` (the data config), ``schema`` (the segdense schema file),
``features`` (what a config reads, the model's ``InputSpec``), ``files`` (which files),
``reader`` (what a file format provides to the loader), ``parquet_format`` (the one format),
``preprocess`` (the steps), ``embedding_ids`` (large embedding rows), ``pipeline`` (ordered
thread-parallel map), and the loader: ``sharing`` (files among ranks), ``epoch_order``
(shuffling into windows), ``reading`` (decoding windows into a row stream), ``batching`` (rows
into ``RecapBatch``), ``dataset`` (``ReadOptions``, ``RecapDataset``, ``build_dataset``).
The batch itself and the input spec are the data/model contract in
``projects.home.recap.inputs``; the synthetic data generator is a tool
(``projects.home.recap.tools.generate_random_data``).
Nothing is imported here, so that importing the config stays light.
"""
