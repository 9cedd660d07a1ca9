"""Evaluation: scoring a trained model's samples (the shared evaluation step; the downstream-utility harness, utility.py; later bias).

Sits above models and metrics and below tracking: nothing here writes to MLflow.
"""
