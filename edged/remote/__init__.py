"""Signed config bundles: verify, stage, apply, roll back."""
