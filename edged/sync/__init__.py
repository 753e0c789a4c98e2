"""Store-and-forward outbox and uploader."""
