"""Stages as grids of independent jobs (fine-tuning, evaluation): grid.py lists them, runner.py shares them out."""
