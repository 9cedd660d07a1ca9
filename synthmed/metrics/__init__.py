"""Metrics: one file per family; keys live in names.py."""
