"""Production retraining: one command per cycle (newest data window, warm start from the promoted
model, evaluation of candidate and incumbent on the same held-out slice, a promotion gate) and a
model registry on plain storage. docs/retraining.md describes the command and its schedules."""
