"""Training, evaluation, figures and reports (the only layer that knows every other one)."""
from .trainer import NonFiniteLossError, train

__all__ = ["train", "NonFiniteLossError"]
