"""Agent runtime, tool registry, retail and clinic tools."""
