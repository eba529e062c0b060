"""Checks: one module per claim of docs/checks.md, discovered by ntkcheck.checks.registry."""
