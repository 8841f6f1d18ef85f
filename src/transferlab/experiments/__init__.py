"""Experiments: training runs, evaluation and prediction from run directories."""
