"""The EMA target network of consistency distillation: theta- <- mu theta- + (1 - mu) theta."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """Move every floating tensor of `target` toward `online`, frozen ones included.

    AnimateLCM's initialisation (v1 sec. 4.2, via a review) starts the target without the spatial LoRA that
    the online model has merged; updating all weights moves the target's spatial weights toward base + LoRA
    geometrically (1 - mu^n after n updates).
    """
    online_state = online.state_dict()
    for name, value in target.state_dict().items():
        if value.is_floating_point():
            value.lerp_(online_state[name].to(value.dtype), 1.0 - decay)
