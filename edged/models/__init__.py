"""Model catalog, memory/power budget, manager and backends."""
