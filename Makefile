# The two commands (see README.md). Each sets up a fresh machine first (infra/bootstrap.sh).
.PHONY: pipeline test setup lint

setup:
	bash infra/bootstrap.sh

pipeline: setup
	.venv/bin/python -m flows

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .
