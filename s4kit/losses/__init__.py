"""Losses: pure functions of tensors (no model, method, dataset or trainer imports)."""
