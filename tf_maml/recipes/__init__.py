"""End-to-end experiments (train, evaluate, plot, export) that the scripts call."""
