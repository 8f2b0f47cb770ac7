"""The I/O path: the app and its routes, the upstream client, the stream relay and its
clocks, non-stream handling, the guard and readiness."""
