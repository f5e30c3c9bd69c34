"""The model worker: scores every reading with a forecaster loaded from a file,
and runs the stream analytics (windows, running statistics) beside it."""
