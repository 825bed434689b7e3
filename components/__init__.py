"""The SimCLR pipeline library: pure, typed building blocks (no Prefect)."""
