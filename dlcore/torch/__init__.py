"""dlcore.torch: drop dlcore's fused kernels into ordinary PyTorch code.

    opt = dlcore.torch.AdamW(model.parameters(), lr=3e-4)   # torch.optim.AdamW on dlcore's fused update
    with dlcore.torch.patch():                               # torch.nn.functional.softmax & co. -> dlcore
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    dlcore.torch.patch(model)                                # or: route one module's forward for good
    print(dlcore.torch.patch_stats())                        # what ran on dlcore, what fell back and why

Needs PyTorch (``pip install 'dlcore[torch]'``); ``import dlcore`` alone never imports it.
"""
from __future__ import annotations

from dlcore.torch.optim import SGD, Adam, AdamW
from dlcore.torch.patch import PATCHED_FUNCTIONS, patch, patch_stats, reset_patch_stats, unpatch

__all__ = ["PATCHED_FUNCTIONS", "SGD", "Adam", "AdamW", "patch", "patch_stats", "reset_patch_stats", "unpatch"]
