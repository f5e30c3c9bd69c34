"""Stream analytics beside scoring: epoch-aligned tumbling windows and running
statistics per (device, sensor, field), exact under replay.

`engine` is the pure step (numpy, no client library); `stage` is the thin I/O
stage the worker loop drives through `model_worker.stage.Stage`.
"""
