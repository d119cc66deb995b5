"""The latency model: a table of the model's layers timed on the device, junctions, the fit, prediction of a
configuration's latency before it is built, allocation of pruning by predicted time, and screening."""
