"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the importance engine and the trainers.

``accelerate launch --config_file CONFIG.yaml`` with ``distributed_type: FSDP`` starts the processes
(torchrun) and describes the FSDP settings in environment variables (``ACCELERATE_USE_FSDP``,
``FSDP_VERSION``, ``FSDP_TRANSFORMER_CLS_TO_WRAP``, …). This module reads them
(:func:`fsdp_settings`) and offers what both engines need:

- :func:`load_sharded_model` — the importance engine's model: every module of a wrap class
  (``LlamaDecoderLayer``, ``WhisperEncoderLayer``) becomes its own FSDP unit, the root holds the rest
  (embeddings, lm_head, adaptor, norms); each rank keeps 1/R of every parameter as a DTensor shard.
  With ``fsdp_cpu_ram_efficient_loading`` only rank 0 reads the weights; the others build the model
  on the meta device and receive their shards by broadcast.
- :func:`enable_fsdp_on_cpu` — accelerate 1.15 turns FSDP on only for GPU-like devices; with
  ``use_cpu`` (``MULTI_CPU``, gloo) it silently falls back to DDP. The trainers call this to run the
  same FSDP2 code path on CPU processes (tests, laptops).
- :func:`memory_per_rank` — the memory model of docs/training.md (bytes per rank).

Without an FSDP launch none of this changes a run: `fsdp_settings` is None, parameters are plain
tensors (`is_sharded` is False) and `enable_fsdp_on_cpu` does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

MIXED_PRECISION = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_TRUE = ("1", "true", "yes", "on")


class FSDPError(ValueError):
    """An FSDP configuration cannot be used for this run; the message says which setting."""


@dataclass(frozen=True)
class FSDPSettings:
    """The FSDP part of an accelerate config, as `accelerate launch` exports it.

    Attributes:
        version: ``fsdp_version`` (1: FullyShardedDataParallel, 2: ``fully_shard``).
        layer_classes: ``fsdp_transformer_layer_cls_to_wrap`` class names (empty: the model's
            ``_no_split_modules``).
        auto_wrap_policy: ``TRANSFORMER_BASED_WRAP`` | ``SIZE_BASED_WRAP`` | ``NO_WRAP``.
        reshard_after_forward: free the gathered parameters of a unit after its forward.
        offload_params: keep the shards (and their gradients) in CPU memory (training only).
        cpu_ram_efficient_loading: only rank 0 reads the weights; the others get them by broadcast.
        activation_checkpointing: ``fsdp_activation_checkpointing`` (used by training).
        state_dict_type: ``FULL_STATE_DICT`` | ``SHARDED_STATE_DICT``.
        mixed_precision: accelerate's ``mixed_precision`` (``no`` | ``bf16`` | ``fp16``).
    """

    version: int = 2
    layer_classes: tuple[str, ...] = ()
    auto_wrap_policy: str = "TRANSFORMER_BASED_WRAP"
    reshard_after_forward: bool = True
    offload_params: bool = False
    cpu_ram_efficient_loading: bool = False
    activation_checkpointing: bool = False
    state_dict_type: str = "FULL_STATE_DICT"
    mixed_precision: str = "no"


def _flag(environ: Mapping[str, str], key: str, default: bool = False) -> bool:
    value = environ.get(key)
    return default if value is None else value.strip().lower() in _TRUE


def fsdp_settings(environ: Mapping[str, str] | None = None) -> FSDPSettings | None:
    """The FSDP settings `accelerate launch` put in the environment, or None when FSDP is not on.

    Raises:
        FSDPError: an unreadable ``FSDP_VERSION`` or an unknown mixed precision.
    """
    environ = os.environ if environ is None else environ
    if not _flag(environ, "ACCELERATE_USE_FSDP"):
        return None
    try:
        version = int(environ.get("FSDP_VERSION", "1"))
    except ValueError as error:
        raise FSDPError(f"FSDP_VERSION={environ.get('FSDP_VERSION')!r} is not 1 or 2") from error
    mixed = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mixed not in MIXED_PRECISION:
        raise FSDPError(f"mixed_precision {mixed!r} is not supported under FSDP here; use one of {', '.join(MIXED_PRECISION)}")
    classes = tuple(name.strip() for name in environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if name.strip())
    reshard = environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    return FSDPSettings(
        version=version,
        layer_classes=classes,
        auto_wrap_policy=environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").upper(),
        # FSDP1 configs carry a sharding strategy here (FULL_SHARD, SHARD_GRAD_OP …).
        reshard_after_forward=reshard in _TRUE or reshard == "full_shard",
        offload_params=_flag(environ, "FSDP_OFFLOAD_PARAMS"),
        cpu_ram_efficient_loading=_flag(environ, "FSDP_CPU_RAM_EFFICIENT_LOADING"),
        activation_checkpointing=_flag(environ, "FSDP_ACTIVATION_CHECKPOINTING"),
        state_dict_type=environ.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT").upper(),
        mixed_precision=mixed,
    )


# --- processes and devices --------------------------------------------------------------------


def fsdp_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when GPUs are visible (the device is made current), else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_fsdp_process_group() -> tuple[int, int]:
    """(rank, world size); creates the default group (NCCL on GPUs, gloo on CPUs) when needed."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise FSDPError("FSDP needs a launcher: run under `accelerate launch --config_file …` (or torchrun)")
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


# --- sharding the importance engine's model -----------------------------------------------------


def wrap_classes(model: torch.nn.Module, settings: FSDPSettings) -> tuple[str, ...]:
    """The class names each of whose modules becomes an FSDP unit, checked against the model.

    Raises:
        FSDPError: the policy does not wrap per layer, or a class is not in the model.
    """
    if settings.auto_wrap_policy != "TRANSFORMER_BASED_WRAP":
        raise FSDPError(f"fsdp_auto_wrap_policy {settings.auto_wrap_policy} is not supported here: "
                        "use TRANSFORMER_BASED_WRAP (one FSDP unit per decoder layer)")
    present = {type(module).__name__ for module in model.modules()}
    classes = settings.layer_classes or tuple(  # the model's own list names classes of absent parts too
        name for name in (getattr(model, "_no_split_modules", None) or ()) if name in present)
    missing = [name for name in classes if name not in present]
    if not classes or missing:
        layers = sorted(name for name in present if name.endswith("Layer"))
        raise FSDPError(f"fsdp_transformer_layer_cls_to_wrap {list(missing or classes)} not found in the model; "
                        f"its layer classes are {layers}")
    return classes


def check_sharding_settings(settings: FSDPSettings) -> None:
    """What `shard_model` supports: FSDP2, per-layer wrapping, no parameter offload.

    Raises:
        FSDPError: naming the setting.
    """
    if settings.version != 2:
        raise FSDPError(f"fsdp_version {settings.version}: this needs fsdp_version 2 (torch.distributed.fsdp.fully_shard)")
    if settings.offload_params:
        raise FSDPError("fsdp_offload_params is not supported by importance (the batches would stay on the CPU); "
                        "set it to false or use more processes")
    if settings.auto_wrap_policy != "TRANSFORMER_BASED_WRAP":
        raise FSDPError(f"fsdp_auto_wrap_policy {settings.auto_wrap_policy} is not supported here: "
                        "use TRANSFORMER_BASED_WRAP (one FSDP unit per decoder layer)")


def shard_model(model: torch.nn.Module, settings: FSDPSettings, device: torch.device) -> dict[str, str]:
    """`fully_shard` every module of a wrap class (bottom-up), then the root; returns the units
    (module name → class name).

    Gradients are *summed* over ranks (divide factor 1): each rank back-propagates its own rows of
    a batch, so the reduce-scattered gradient is that of the whole batch.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    check_sharding_settings(settings)
    classes = set(wrap_classes(model, settings))
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    compute = MIXED_PRECISION[settings.mixed_precision]
    kwargs = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)}
    units = {name: type(module).__name__ for name, module in model.named_modules() if type(module).__name__ in classes}
    modules = dict(model.named_modules())
    for name in reversed(list(units)):  # bottom-up: inner units before the ones containing them
        fully_shard(modules[name], reshard_after_forward=settings.reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: no PREMUL_SUM (gloo lacks it)
    return units


def load_sharded_model(model_dir: str | Path, settings: FSDPSettings, dtype: torch.dtype = torch.float32,
                       trust_remote_code: bool | None = None):
    """(FSDP2-sharded SpeechLlama model in eval mode, processor, its FSDP units: name → class).

    Every rank must call it (collectives). Without ``cpu_ram_efficient_loading`` each rank reads
    the weights and keeps its shards; with it, rank 0 reads them and broadcasts the shards while
    the other ranks build the model on the meta device (CPU memory: one full copy on rank 0).
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from modeling_speech_llama import SpeechLlamaConfig, SpeechLlamaForCausalLM

    from .remote_code import load_processor

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); build one with `speech-llama build`")
    check_sharding_settings(settings)  # before minutes of loading
    rank = dist.get_rank()
    device = fsdp_device()
    broadcast = settings.cpu_ram_efficient_loading and dist.get_world_size() > 1
    if broadcast and rank != 0:
        config = SpeechLlamaConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = SpeechLlamaForCausalLM(config).to(dtype)
        model.encoder.requires_grad_(not config.freeze_encoder)
        full_state = {}
    else:
        model = SpeechLlamaForCausalLM.from_pretrained(model_dir, dtype=dtype)
        full_state = model.state_dict() if broadcast else None
    model.eval()
    if broadcast:
        _mirror_rank0_dtypes(model)
    units = shard_model(model, settings, device)
    if broadcast:
        if rank != 0:
            model.to_empty(device=device)
        set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full_state
        for buffer in model.buffers():  # non-persistent buffers (rotary frequencies) are in no state dict
            dist.broadcast(buffer.data, src=0)
    processor = load_processor(model_dir, trust_remote_code)
    return model, processor, units


def _mirror_rank0_dtypes(model: torch.nn.Module) -> None:
    """Give every parameter and buffer of the meta-built models the dtype rank 0 loaded it in.

    ``from_pretrained(dtype=…)`` keeps some tensors in float32 (the rotary frequencies); a model
    built on the meta device and cast with ``.to(dtype)`` would not, and a broadcast or all-gather
    between tensors of different dtypes is garbage.
    """
    import torch.distributed as dist

    layout = [{kind: {name: str(tensor.dtype).removeprefix("torch.") for name, tensor in tensors}
               for kind, tensors in (("params", model.named_parameters()), ("buffers", model.named_buffers()))}]
    dist.broadcast_object_list(layout, src=0)
    wanted = layout[0]
    for kind, tensors in (("params", model.named_parameters()), ("buffers", model.named_buffers())):
        mine = dict(tensors)
        if set(mine) != set(wanted[kind]):
            different = sorted(set(mine) ^ set(wanted[kind]))[:3]
            raise FSDPError(f"the model built on rank {dist.get_rank()} differs from rank 0's ({kind} {different})")
        for name, tensor in mine.items():
            dtype = getattr(torch, wanted[kind][name])
            if tensor.dtype == dtype:
                continue
            if kind == "params":
                tensor.data = tensor.data.to(dtype)
            else:
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._buffers[leaf] = tensor.to(dtype)


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a DTensor (an FSDP2 parameter or a tensor laid out like one)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (sharing its storage), or the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


# --- accelerate on CPU ------------------------------------------------------------------------------


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Switch an accelerate ``MULTI_CPU`` state to FSDP with the launcher's plugin; True if switched.

    accelerate 1.15 enables FSDP only for GPU-like devices: on CPU processes the FSDP config is
    ignored and the model is wrapped in DDP. PyTorch's ``fully_shard`` itself runs on CPU with gloo,
    so the FSDP plugin (built from the same environment) is installed on the state before anything
    is prepared; everything after that is accelerate's own FSDP2 path.

    Raises:
        FSDPError: FSDP was requested but the processes are neither FSDP nor MULTI_CPU (e.g. a
            machine without GPUs and ``use_cpu`` false: every process would train alone).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if fsdp_settings() is None or state.distributed_type == DistributedType.FSDP:
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise FSDPError(f"the accelerate config asks for FSDP but the processes run as {state.distributed_type.value}; "
                        "on a machine without GPUs set use_cpu: true in the run's YAML (or --use_cpu true)")
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise FSDPError(f"FSDP on CPU needs fsdp_version 2 (fully_shard); the config has {plugin.fsdp_version}")
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # AcceleratorState() copies PartialState's fields each time it is constructed: switch both.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


# --- memory ---------------------------------------------------------------------------------------------


def memory_per_rank(method: str, params: int, ranks: int, dtype_bytes: int = 2, *, analysed: int | None = None,
                    trainable: int | None = None, unit: int = 0, root: int = 0) -> dict[str, int]:
    """The memory model of docs/training.md: bytes one rank holds, activations not included.

    Args:
        method: ``importance`` | ``full`` | ``layer_lr`` | ``lora``.
        params: P, all parameters of the model (LoRA: base + adapters).
        ranks: R, FSDP processes (1: one process, nothing sharded or gathered).
        dtype_bytes: b, bytes per stored frozen / compute weight (2 for bf16, 4 for fp32).
        analysed: P_a, analysed parameters (importance; default P).
        trainable: P_t, trained parameters (full / layer_lr: default P; lora: adapters + adaptor).
        unit: parameters of the largest FSDP unit (one decoder layer).
        root: parameters gathered for a whole step (importance: the root unit with embeddings,
            lm_head, adaptor, norms; training: accelerate's tail unit, lm_head + final norm).
            Full-FT and Layer-LR train it: its unsharded gradient and fp32 reduce-scatter buffer
            are held too, which at Llama-3's 128 257-row vocabulary is the largest gathered term.
    Returns:
        ``{"sharded": …, "gathered": …, "total": …}`` in bytes:

        - importance: sharded = (b·P + 4·P_a) / R (weights + fp32 accumulators);
        - full / layer_lr / lora: sharded = (b·(P − P_t) + 16·P_t) / R (frozen weights; fp32 master
          weight, fp32 gradient and two fp32 AdamW moments per trained parameter — Layer-LR only
          splits the same tensors into more groups);
        - gathered (R > 1) = (3b + 4)·unit + b·root: a running unit and the prefetched next one,
          the running unit's unsharded gradient and its fp32 reduce-scatter buffer, plus the root;
          full / layer_lr add the root's gradient and reduce-scatter buffer: + (b + 4)·root.
    """
    if method not in ("importance", "full", "layer_lr", "lora"):
        raise ValueError(f"unknown method {method!r}")
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if method == "importance":
        analysed = params if analysed is None else analysed
        sharded = (params * dtype_bytes + analysed * 4) / ranks
    else:
        trainable = params if trainable is None else trainable
        sharded = ((params - trainable) * dtype_bytes + trainable * 16) / ranks
    root_bytes = 2 * dtype_bytes + 4 if method in ("full", "layer_lr") else dtype_bytes
    gathered = (unit * (3 * dtype_bytes + 4) + root * root_bytes) if ranks > 1 else 0
    return {"sharded": int(sharded), "gathered": int(gathered), "total": int(sharded + gathered)}


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM) since start or the last :func:`reset_peak_rss`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """This process's current resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: write 5 to /proc/self/clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


__all__ = [
    "FSDPError",
    "FSDPSettings",
    "enable_fsdp_on_cpu",
    "fsdp_device",
    "check_sharding_settings",
    "fsdp_settings",
    "init_fsdp_process_group",
    "is_sharded",
    "load_sharded_model",
    "local",
    "memory_per_rank",
    "peak_rss_bytes",
    "reset_peak_rss",
    "rss_bytes",
    "shard_model",
    "wrap_classes",
]
