"""Standalone tasks: each defines only its data, model and metric; the runner does the rest."""
