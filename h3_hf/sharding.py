"""Sharded data-parallel training (torch FSDP2) of the H3, S4D and S5 models, and saving from a sharded run.

Plain torch, no Trainer: this is the path that also runs on CPU (gloo), where accelerate does not enable FSDP.

    model = shard_model(H3ForCausalLM(config), mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                               reduce_dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)   # after shard_model: it sees the shards
    ... loss = model(**batch).loss; loss.backward(); optimizer.step(); optimizer.zero_grad()
    save_sharded_checkpoint("run/step-1000", model, optimizer, extra={"step": 1000})   # resumable, every rank
    save_pretrained_from_shards(model, "run/final")   # one loadable folder, written by rank 0

The functions that take a sharded model are collective: call them on every rank (``torch.distributed``
initialised, e.g. by torchrun). docs/distributed.md has a complete loop and the multi-machine commands.
"""

import copy
import gc
import json
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

__all__ = ["check_trainer_fsdp", "float32_modules", "gather_full_state_dict", "load_sharded_checkpoint",
           "residual_blocks", "save_pretrained_from_shards", "save_sharded_checkpoint", "shard_model",
           "shutdown_process_group", "unsharded_class"]

FLOAT32_POLICY = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


def unsharded_class(module: nn.Module) -> type:
    """The module's own class (``fully_shard`` swaps it for a subclass ``FSDP<Class>``)."""
    return next(cls for cls in type(module).__mro__ if not issubclass(cls, FSDPModule))


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's residual blocks: the modules whose class name is in ``model._no_split_modules``, in order."""
    names = set(model._no_split_modules or [])
    blocks = [module for module in model.modules() if unsharded_class(module).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no module of the classes {sorted(names)} (_no_split_modules)")
    return blocks


def float32_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that hold the parameters named by ``model._keep_in_fp32_modules_strict`` (the SSM parameters).

    A parameter is kept float32 when one of those strings occurs in its name (``layers.0.mixer.kernel.log_dt``
    contains ``mixer.kernel``), as ``from_pretrained`` decides it. Returns the modules that own such parameters
    directly, innermost first; every parameter they own directly must be one of them, since a sharded unit
    gathers all its parameters in one dtype.
    """
    patterns = list(model._keep_in_fp32_modules_strict or [])
    modules = {}
    for module_name, module in model.named_modules():
        own = [f"{module_name}.{name}" for name, _ in module.named_parameters(recurse=False)]
        kept = [name for name in own if any(pattern in name for pattern in patterns)]
        if kept and len(kept) < len(own):
            raise ValueError(f"{module_name} holds float32 SSM parameters {kept} next to others; they cannot be "
                             "sharded as one float32 unit")
        if kept:
            modules[module_name] = module
    return [modules[name] for name in sorted(modules, key=lambda name: -name.count("."))]


def shard_model(model: nn.Module, mp_policy: MixedPrecisionPolicy | None = None, mesh=None,
                reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``model`` (H3, S4D or S5, any head) in place with FSDP2 and return it.

    Units, innermost first: each SSM parameter module (:func:`float32_modules`) under a float32 policy whatever
    ``mp_policy`` says, each residual block (:func:`residual_blocks`) under ``mp_policy``, then the root
    (embeddings, final norm, head; tied weights stay in one unit) under ``mp_policy``. So with
    ``MixedPrecisionPolicy(param_dtype=torch.bfloat16)`` the projections and MLPs compute in bfloat16 while the
    SSM kernels, FFT convolutions and scans get float32 parameters; the stored (sharded) parameters,
    gradients and optimizer states stay float32 throughout.

    The models use SSM modules through methods other than ``forward`` (``kernel.discrete()``), which FSDP's
    hooks do not see: so each block gathers its SSM units when its forward starts, and they stay gathered
    (they are small: a few vectors of ``state_size`` per channel) until backward has their gradients; then FSDP
    reduce-scatters their gradients and frees them; without grad (evaluation) the block frees them after its
    forward. ``mesh``: a 1-D ``DeviceMesh`` (default: all ranks); ``reshard_after_forward``: for the blocks.
    Build the optimizer after this call: the model's parameters become ``DTensor`` shards. With
    ``cast_forward_inputs`` (the policy's default) the root casts floating-point inputs to ``param_dtype``,
    S5's real-valued ``input_values`` and ``timesteps`` included: the SSM gets them back in float32, rounded.
    """
    mp_policy = mp_policy or MixedPrecisionPolicy()
    float32_units = float32_modules(model)
    for module in float32_units:
        # FSDP warns about views returned by a unit (its pre-backward hook could be lost); these units stay
        # gathered through backward, so that hook does nothing: return copies and spare the warning
        module.register_forward_hook(_copy_views, prepend=True)
        fully_shard(module, mesh=mesh, mp_policy=FLOAT32_POLICY, reshard_after_forward=False)
    for block in residual_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward)
        inner = [module for module in block.modules() if module is not block and isinstance(module, FSDPModule)]
        if inner:
            block.register_forward_pre_hook(_unshard_hook(inner))
            block.register_forward_hook(_reshard_without_grad_hook(inner))
    return fully_shard(model, mesh=mesh, mp_policy=mp_policy)


def _copy_views(module, args, output):
    if isinstance(output, torch.Tensor) and output._base is not None:
        return output.clone()
    return output


def _unshard_hook(units: list[FSDPModule]):
    def hook(module, args):
        for unit in units:
            unit.unshard()
    return hook


def _reshard_without_grad_hook(units: list[FSDPModule]):
    def hook(module, args, output):
        if not torch.is_grad_enabled():  # no backward will come to free them
            for unit in units:
                unit.reshard()
    return hook


def gather_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """All-gather the sharded ``model``'s full state dict to rank 0, on CPU, float32 as stored.

    Returns ``{name: tensor}`` with the unsharded model's keys and shapes on rank 0, ``{}`` on other ranks
    (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``); one full copy lives on rank 0's CPU.
    """
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained_from_shards(model: nn.Module, save_directory: str, **kwargs) -> None:
    """Write the sharded ``model`` as ``save_pretrained`` writes the unsharded one; rank 0 writes, all wait.

    Gathers the full state dict to rank 0 (:func:`gather_full_state_dict`), loads it into a plain model of the
    same class and config, and calls its ``save_pretrained(save_directory, **kwargs)``: ``model.safetensors``,
    ``config.json`` (``architectures`` names the model's class, not FSDP's), ``generation_config.json`` for
    the language model, and the modeling code. The folder loads with ``from_pretrained`` in one process.
    """
    state_dict = gather_full_state_dict(model)
    if dist.get_rank() == 0:
        with torch.random.fork_rng(devices=[]):  # building the plain model must not move rank 0's RNG
            plain = unsharded_class(model)(copy.deepcopy(model.config))
        plain.load_state_dict(state_dict)
        if getattr(model, "generation_config", None) is not None:
            plain.generation_config = copy.deepcopy(model.generation_config)
        plain.save_pretrained(save_directory, **kwargs)
    dist.barrier()


def save_sharded_checkpoint(checkpoint_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                            extra: dict | None = None) -> None:
    """Save model and optimizer shards with ``torch.distributed.checkpoint`` (each rank writes its own shards).

    ``checkpoint_dir`` gets one ``__N_0.distcp`` file per rank and ``.metadata``; ``extra`` (e.g.
    ``{"step": 1000}``, JSON values) goes to ``extra.json`` beside them. Nothing is gathered, so it suits large
    models and long runs. RNG and learning-rate scheduler states are not included: save them yourself (in
    ``extra``, or a file per rank) if the run needs them, e.g. with dropout.
    """
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=os.fspath(checkpoint_dir))
    if dist.get_rank() == 0:
        with open(os.path.join(checkpoint_dir, "extra.json"), "w") as f:
            json.dump(extra or {}, f)
    dist.barrier()


def load_sharded_checkpoint(checkpoint_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load a :func:`save_sharded_checkpoint` folder into the sharded ``model`` and its ``optimizer``.

    Build and shard the model, and create the optimizer, as for the saved run first. Returns ``extra``.
    """
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=os.fspath(checkpoint_dir))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    with open(os.path.join(checkpoint_dir, "extra.json")) as f:
        return json.load(f)


def shutdown_process_group() -> None:
    """End a distributed run: wait for every rank, then destroy the process groups while Python is fully alive.

    Call it on every rank instead of ``dist.destroy_process_group()`` at the end of a script (also after a Trainer
    run under torchrun / accelerate launch, whose process group nobody destroys; without a process group it does
    nothing). A gloo worker thread
    can still be releasing the tensors of the last collective (e.g. an ``all_reduce`` of the loss) when the main
    thread returns; if the process group is then freed during interpreter shutdown, that thread needs the GIL
    after Python has finalised and the process aborts (SIGABRT, "terminate called without an active exception").
    Destroying the groups and collecting the garbage that refers to them here (their threads are joined in the
    destructor) leaves nothing for shutdown.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def check_trainer_fsdp(training_args) -> None:
    """Raise ``ValueError`` (one line) when the Trainer is asked for FSDP where it would not shard.

    accelerate enables FSDP only for accelerators (CUDA, XPU, NPU, ...): with ``--use_cpu`` or no accelerator,
    ``--fsdp`` (or an accelerate config with FSDP) silently gives plain data parallelism (DDP) instead.
    """
    asked = training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and (training_args.use_cpu or not torch.accelerator.is_available()):
        raise ValueError("argument --fsdp: the Trainer shards only on GPUs or other accelerators (on CPU accelerate "
                         "runs plain DDP); for sharded training on CPU use h3_hf.sharding.shard_model in a torch "
                         "loop (docs/distributed.md)")
