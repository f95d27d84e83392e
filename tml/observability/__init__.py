"""Standard-library logging set-up and the metric loggers (console, TensorBoard, JSONL)."""
