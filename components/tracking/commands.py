"""Placeholder until MLflow tracking lands: no registry commands yet."""

COMMANDS: dict = {}
