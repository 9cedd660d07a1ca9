"""Evaluation: scoring a trained model's samples (the shared evaluation step; later utility and bias).

Sits above models and metrics and below tracking: nothing here writes to MLflow.
"""
