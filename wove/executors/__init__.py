"""Executors: where a task's call actually runs (this process, a stdio worker, a backend such as Slurm)."""
