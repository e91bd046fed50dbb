"""A training job's orchestration, above run, tracking and search, below the command lines: every check of the
job's values before anything runs (checks), and the steps of one training job (steps)."""
