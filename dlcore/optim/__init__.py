"""dlcore.optim: SGD, Adam and AdamW on the fused update kernels; schedules; gradient clipping."""
from dlcore.nn.utils import clip_grad_norm_
from dlcore.optim import lr_scheduler
from dlcore.optim.lr_scheduler import CosineAnnealingLR, LinearWarmup, StepLR
from dlcore.optim.optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "StepLR", "CosineAnnealingLR", "LinearWarmup", "lr_scheduler",
           "clip_grad_norm_"]
