"""`easel serve`: an OpenAI-compatible HTTP server (images, edits, video jobs) over one model in a worker process."""
