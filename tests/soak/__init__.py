"""The reliability soak (scripts/soak): not collected by pytest, run as ``python -m tests.soak``."""
