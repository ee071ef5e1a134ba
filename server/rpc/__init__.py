"""Servicer methods, one module per capability (log, queue, consumers, admin)."""
