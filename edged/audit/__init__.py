"""Encrypted, hash-chained audit log."""
