"""Studies: search spaces, Optuna studies run through Ray Tune, status and export."""
