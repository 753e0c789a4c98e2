"""The local HTTP API on the Unix socket."""
