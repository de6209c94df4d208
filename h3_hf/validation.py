"""Config and input checks shared by the three model families: a ``ValueError`` naming the field or argument, the
value and what is allowed, raised before any work.

Checkpoints carry this file with their code (it is imported as ``from .validation import ...``), so it imports
nothing but torch, huggingface_hub and transformers.
"""

import functools

import torch
from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError

# ---- config checks: ValueError("<Config>.<field>=<value> is invalid: <what is allowed>") at construction ----


def strict_config(cls):
    """``@strict(accept_kwargs=True)`` whose errors are ValueErrors, at construction and from ``validate()``
    (huggingface_hub raises its own ``StrictDataclassError``, which is not one); the message names the config, the
    field and the value. ``validate()`` runs the config's ``validate_*`` methods; models call it when built."""
    cls = strict(accept_kwargs=True)(cls)

    def as_value_error(method):
        @functools.wraps(method)
        def wrapped(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except StrictDataclassError as e:
                cause = e.__cause__  # a validate_* method's ValueError already names config, field and value
                raise ValueError(str(cause) if isinstance(cause, ValueError) else f"{cls.__name__}: {cause or e}"
                                 ) from e
        return wrapped

    cls.__init__ = as_value_error(cls.__init__)
    cls.validate = as_value_error(cls.validate)
    cls.validate.__is_defined_by_strict_decorator__ = True  # lets a strict subclass replace it
    return cls


_FIELD = object()


def require(config, ok: bool, field: str, allowed: str, value=_FIELD):
    """Raise unless ``ok``; ``value`` defaults to the field's."""
    if not ok:
        value = getattr(config, field) if value is _FIELD else value
        raise ValueError(f"{type(config).__name__}.{field}={value!r} is invalid: {allowed}")


def require_positive(config, *fields: str, optional: bool = False):
    """Integer fields > 0 (or None when ``optional``); their type is checked by ``strict``."""
    for field in fields:
        value = getattr(config, field)
        require(config, (optional and value is None) or (value is not None and value > 0), field,
                "must be None or a positive integer" if optional else "must be a positive integer")


def require_choice(config, field: str, choices: tuple):
    require(config, getattr(config, field) in choices, field, f"allowed values are {choices}")


def require_common(config, dropouts: tuple[str, ...], eps: str):
    """Checks of fields every config has: dt_min, dt_max, dropout probabilities, a LayerNorm epsilon and
    initializer_range (NaN fails every comparison, so it is rejected too)."""
    require(config, 0 < config.dt_min < float("inf"), "dt_min", "must be a finite number > 0")
    require(config, config.dt_min <= config.dt_max < float("inf"), "dt_max",
            f"must be a finite number >= dt_min={config.dt_min}")
    for field in dropouts:
        require(config, 0 <= getattr(config, field) < 1, field, "must be a dropout probability in [0, 1)")
    require(config, 0 < getattr(config, eps) < float("inf"), eps, "must be a finite number > 0")
    require(config, 0 <= config.initializer_range < float("inf"), "initializer_range",
            "must be a finite number >= 0")



POOLINGS = ("mean", "last")


def require_classifier(config):
    """Fields the S4D and S5 configs share: exactly one of vocab_size / input_size, pooling and the head's
    num_labels / problem_type (strict cannot check the latter's Literal annotation)."""
    require(config, (config.vocab_size is None) != (config.input_size is None), "vocab_size/input_size",
            "set exactly one of vocab_size (tokens) or input_size (real-valued)",
            (config.vocab_size, config.input_size))
    require_positive(config, "vocab_size", "input_size", optional=True)
    require_choice(config, "pooling", POOLINGS)
    require(config, config.num_labels >= 1, "num_labels", "must be a positive integer")
    require_choice(config, "problem_type",
                   (None, "regression", "single_label_classification", "multi_label_classification"))

# ---- forward input checks, run before any work: ValueError naming the argument ----


def is_tracing(tensor: torch.Tensor | None = None) -> bool:
    """True while torch.compile, torch.export or torch.jit trace the model (or ``tensor`` is a fake or proxy
    tensor): value checks read tensor values and branch in Python, so they are skipped then."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if tensor is None:
        return False
    from torch._subclasses.fake_tensor import is_fake

    return isinstance(tensor, torch.fx.Proxy) or is_fake(tensor)


def check_ids_or_embeds(input_ids, inputs_embeds, vocab_size: int, embed_size: int, embed_dtype: torch.dtype,
                        check_values: bool = True):
    """Exactly one of ``input_ids`` (batch, length) int64/int32 in [0, vocab_size) or ``inputs_embeds`` (batch,
    length, embed_size) of the model's floating dtype (any under autocast); length > 0. Returns (batch, length).

    The token range is checked only when ``check_values`` and not while tracing (see :func:`is_tracing`)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an int64 or int32 tensor of token ids, got {input_ids.dtype}")
        if check_values and input_ids.numel() and not is_tracing(input_ids):
            low, high = torch.aminmax(input_ids)
            if low < 0 or high >= vocab_size:
                raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got values in "
                                 f"[{int(low)}, {int(high)}]")
        shape = tuple(input_ids.shape)
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != embed_size:
            raise ValueError(f"inputs_embeds must have shape (batch, length, {embed_size}), got "
                             f"{tuple(inputs_embeds.shape)}")
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be a floating-point tensor, got {inputs_embeds.dtype}")
        if inputs_embeds.dtype != embed_dtype and not torch.is_autocast_enabled(inputs_embeds.device.type):
            raise ValueError(f"inputs_embeds has dtype {inputs_embeds.dtype} but the model's parameters are "
                             f"{embed_dtype}; cast the inputs (or the model) explicitly")
        shape = tuple(inputs_embeds.shape[:2])
    if 0 in shape:
        raise ValueError(f"the inputs are empty: input_ids / inputs_embeds need batch >= 1 and length >= 1, got "
                         f"(batch, length) = {shape}")
    return shape


def check_mask_values(attention_mask: torch.Tensor):
    """An ``attention_mask`` holds 0 (padding) and 1 (token) only, of any dtype (bool, integer or floating);
    not checked while tracing."""
    if is_tracing(attention_mask) or attention_mask.dtype == torch.bool:
        return
    bad = (attention_mask != 0) & (attention_mask != 1)
    if bad.any():
        raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (token), got "
                         f"{attention_mask[bad].flatten()[:5].tolist()}")


def check_class_ids(name: str, ids, num_classes: int, ignore_index: int = -100):
    """int64 ``ids`` (what cross_entropy takes) in [0, num_classes) or ``ignore_index`` (labels of the
    classification / LM losses); the range is not checked while tracing."""
    if ids.dtype != torch.int64:
        raise ValueError(f"{name} must be an int64 (torch.long) tensor of class ids, got {ids.dtype}")
    if is_tracing(ids):
        return
    bad = (ids != ignore_index) & ((ids < 0) | (ids >= num_classes))
    if bad.any():
        raise ValueError(f"{name} must lie in [0, {num_classes}) or be {ignore_index} (ignored), got "
                         f"{ids[bad].flatten()[:5].tolist()}")
