"""The search: Optuna ask/tell driving Ray trial tasks, and the device actor that measures latency."""
