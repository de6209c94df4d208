"""Optimizer parameter groups for SSM models.

The S4/S5/H3 papers train the SSM parameters (step sizes, A, B) with no weight decay and often a
smaller learning rate than the rest. ``transformers.Trainer`` only knows decay / no-decay, so build
the optimizer here and hand it over with ``Trainer(..., optimizers=(optimizer, None))``::

    optimizer = create_ssm_optimizer(model, lr=1e-2, weight_decay=0.01, ssm_lr=1e-3)
    trainer = Trainer(model=model, args=args, optimizers=(optimizer, None), ...)
"""

import torch
from torch import nn

_NO_DECAY_PATTERNS = ("bias", "norm")


def ssm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the SSM parameters: those a module lists in its ``ssm_parameter_names`` attribute.

    Duck-typed (no isinstance) so it also works for models loaded with ``trust_remote_code``.
    """
    names = set()
    for module_name, module in model.named_modules():
        for param_name in getattr(module, "ssm_parameter_names", ()):
            if getattr(module, param_name, None) is not None:
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def ssm_parameter_groups(model: nn.Module, lr: float, weight_decay: float, ssm_lr: float | None = None,
                         ssm_weight_decay: float = 0.0) -> list[dict]:
    """Three optimizer groups for ``torch.optim`` optimizers.

    - SSM parameters (log_dt, A, B of diagonal SSMs; S5's Lambda, B, log_step): ``ssm_lr``
      (defaults to ``lr``) and ``ssm_weight_decay`` (default 0);
    - biases and normalisation parameters: ``lr``, no weight decay;
    - everything else: ``lr`` and ``weight_decay``.
    Frozen parameters (requires_grad=False) are left out; empty groups are dropped.
    """
    ssm_names = ssm_parameter_names(model)
    norm_params = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))
                   for p in m.parameters(recurse=False)}
    ssm, no_decay, decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in ssm_names:
            ssm.append(param)
        elif id(param) in norm_params or any(p in name.lower() for p in _NO_DECAY_PATTERNS):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
        {"params": ssm, "lr": lr if ssm_lr is None else ssm_lr, "weight_decay": ssm_weight_decay, "name": "ssm"},
    ]
    return [g for g in groups if g["params"]]


def create_ssm_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, ssm_lr: float | None = None,
                         ssm_weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                         eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`ssm_parameter_groups`."""
    groups = ssm_parameter_groups(model, lr, weight_decay, ssm_lr, ssm_weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
