"""Training: ``TrainConfig`` (YAML + flags), ``Trainer`` on Accelerate, atomic checkpoints."""

from csekit.training.config import TrainConfig
from csekit.training.trainer import Trainer, TrainResult

__all__ = ["TrainConfig", "TrainResult", "Trainer"]
