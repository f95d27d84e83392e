"""Command-line tools around the ranker that are not part of a job: nothing in the library
(data, model, modes) imports them. ``generate_random_data`` writes synthetic, learnable data
for any config (tests, benchmarks, ``make run``)."""
