"""Prefect flows: outlines that call tasks/."""
