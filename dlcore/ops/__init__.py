"""dlcore.ops: the functional API, with torch.nn.functional's names, arguments and semantics.

Each op takes NumPy arrays, torch tensors (CPU or CUDA) or CuPy arrays and returns the same kind; torch
tensors that require grad get gradients from dlcore's fused backward kernels. Every op also takes a
keyword-only ``backend=`` that overrides dispatch for that call (see `dlcore.explain`).
"""
from dlcore.ops.activations import gelu, gelu_backward, relu, relu_backward, silu, silu_backward
from dlcore.ops.attention import scaled_dot_product_attention, scaled_dot_product_attention_backward
from dlcore.ops.bce import binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_backward
from dlcore.ops.cross_entropy import cross_entropy, cross_entropy_backward
from dlcore.ops.layer_norm import layer_norm, layer_norm_backward
from dlcore.ops.linear_act import linear_act, linear_act_backward
from dlcore.ops.matmul import linear, linear_backward, matmul, matmul_backward
from dlcore.ops.mse import mse_loss, mse_loss_backward
from dlcore.ops.optimizers import adam_, adamw_, sgd_
from dlcore.ops.softmax import log_softmax, log_softmax_backward, softmax, softmax_backward

__all__ = [
    "matmul", "matmul_backward", "linear", "linear_backward", "linear_act", "linear_act_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "cross_entropy", "cross_entropy_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "mse_loss", "mse_loss_backward", "layer_norm", "layer_norm_backward",
    "gelu", "gelu_backward", "relu", "relu_backward", "silu", "silu_backward",
    "sgd_", "adam_", "adamw_",
]
