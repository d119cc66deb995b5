"""The search itself: its stages (prepare, baselines, scan, trials, confirm), the scheduler loop and its policies."""
