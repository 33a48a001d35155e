"""The one place where processes, process groups and DeepSpeed engines are set up.

Model code and data code never touch torch.distributed or DeepSpeed; they get `rank` and
`world_size` from here. Three ways in, one code path:
- `jpeglm train` / `python -m jpeglm.train` with no launcher: we set the single-process
  rendezvous variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port),
  because without them DeepSpeed falls back to MPI discovery and asks for mpi4py;
- `deepspeed [--hostfile H] [--num_gpus N] -m jpeglm.train ...` and
- `torchrun --nproc_per_node N -m jpeglm.train ...`: both set those variables themselves.
CUDA gets NCCL, CPU gets gloo (DeepSpeed's CPU accelerator; bf16 and fp32 only).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_rendezvous_env() -> None:
    """Fill in the rendezvous variables of a one-process run when no launcher set them."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init() -> DistInfo:
    """Join (or create) the process group; returns this process's rank and device."""
    ensure_rendezvous_env()
    import deepspeed  # imported late: it prints accelerator probing at import

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank = torch.distributed.get_rank()
    world = torch.distributed.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, local, device)


def fill_deepspeed_config(ds: dict, *, micro_batch: int, grad_accum: int, grad_clip: float, precision: str) -> dict:
    """Replace DeepSpeed's "auto" values with the train config's (as HF Trainer does), and check
    that explicit values agree with it, so the two configs cannot silently disagree."""
    import copy

    ds = copy.deepcopy(ds)
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
    }
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(f"DeepSpeed config sets {key}={ds[key]} but the train config implies {value}; drop it or set it to \"auto\"")
    ds.pop("train_batch_size", None)  # derived: micro * accum * world
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = precision == "bf16"
    elif bool(bf16["enabled"]) != (precision == "bf16"):
        raise ValueError(f"DeepSpeed config bf16.enabled={bf16['enabled']} disagrees with precision={precision}")
    ds.pop("fp16", None)
    ds.setdefault("zero_optimization", {"stage": 0})
    return ds


def uses_optimizer_offload(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") in ("cpu", "nvme")


def build_optimizer(params, ds: dict, *, lr: float, betas, eps: float):
    """torch AdamW, or DeepSpeed's CPU Adam when the optimizer state is offloaded to CPU.

    torch AdamW needs no compiled op, so CPU tests compile nothing; DeepSpeedCPUAdam is compiled
    with g++ on first use (minutes; cached in TORCH_EXTENSIONS_DIR), which is why only the
    offload config pays for it."""
    if uses_optimizer_offload(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=lr, betas=tuple(betas), eps=eps, adamw_mode=True)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps)


def initialize(model, optimizer, lr_scheduler, ds_config: dict):
    """Wrap model + client optimizer + scheduler in a DeepSpeed engine."""
    import deepspeed

    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=ds_config
    )
    return engine, optimizer, lr_scheduler


def build_model(model_class, hf_config, ds_config: dict):
    """Build the model; under ZeRO-3 through transformers' DeepSpeed integration, so each
    parameter is partitioned as it is created (a 7B never sits whole on one rank) and HF's weight
    init runs on gathered parameters."""
    if ds_config.get("zero_optimization", {}).get("stage") == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # transformers holds only a weak reference: it lives while `hf_ds` does, i.e. for this
        # build alone, so a later from_pretrained in this process (an export reloaded for
        # sampling) is not silently built partitioned too
        hf_ds = HfDeepSpeedConfig(ds_config)
        model = model_class._from_config(hf_config)
        del hf_ds
        return model
    return model_class(hf_config)


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def full_state_dict(engine) -> dict | None:
    """The unwrapped model's full state dict (no DeepSpeed prefixes) on rank 0, None elsewhere.

    ZeRO-3 holds each parameter in pieces across ranks; gathering is collective, so every rank
    must call this."""
    if zero_stage(engine) == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return sd if torch.distributed.get_rank() == 0 else None
    if torch.distributed.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
