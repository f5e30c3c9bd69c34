"""The edgepipe HTTP API: queries, time-window metrics, live stream, Sensor
Logger ingest and the dashboard. `python -m api` serves it with uvicorn."""
