"""Prefect flows wiring the stages of components.stages."""
