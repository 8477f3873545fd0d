"""dlcore.nn: layers with torch.nn's names, constructors and default initialisation, on fused kernels."""
from dlcore.nn import init
from dlcore.nn.attention import MultiheadAttention, TransformerEncoderLayer
from dlcore.nn.init import manual_seed
from dlcore.nn.layers import (
    GELU, Dropout, Embedding, Identity, LayerNorm, Linear, ReLU, Sequential, Sigmoid, SiLU, Tanh,
)
from dlcore.nn.module import Module, Parameter
from dlcore.nn.utils import clip_grad_norm_

__all__ = [
    "Module", "Parameter", "Linear", "Embedding", "LayerNorm", "Dropout", "ReLU", "GELU", "SiLU", "Tanh",
    "Sigmoid", "Identity", "Sequential", "MultiheadAttention", "TransformerEncoderLayer", "clip_grad_norm_",
    "init", "manual_seed",
]
