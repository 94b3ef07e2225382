"""The process a user starts: the command line, the HTTP and WebSocket app, the API, metrics, workers."""
