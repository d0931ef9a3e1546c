"""File-facing data code (images, shards, benchmark sets). No mlflow/prefect/dvc imports."""
