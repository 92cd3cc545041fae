"""Prefect tasks: one library call each, plus policy (cache, retries, result storage)."""
