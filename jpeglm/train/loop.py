"""`jpeglm train` / `python -m jpeglm.train`: pretrain an unmodified LlamaForCausalLM on token shards.

Launch it plainly (one process), or with `deepspeed [--hostfile H] [--num_gpus N] --module jpeglm.train`
or `torchrun --nproc_per_node N -m jpeglm.train`; process setup lives in jpeglm.train.distributed.
Every check that can fail on bad input (config, shards, tokenizer vs model, context vs packing,
an output dir holding another run) runs in `prepare()`, before any model is built.

Outputs (docs/CONTRACTS.md "Checkpoints"): OUT/config.yaml, OUT/log.jsonl, OUT/tensorboard/,
OUT/ds/ (DeepSpeed state, for --resume), OUT/checkpoints/step-N + latest (HF exports).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jpeglm.config import ConfigError, atomic_write_text, load_yaml, save_config, to_dict
from jpeglm.errors import UserError, disk_full_hint
from jpeglm.train.config import ModelConfig, TrainConfig, resolve_deepspeed_config, resolve_model_config

# keys of config.yaml that may differ between a run and its --resume (training longer is resuming)
RESUMABLE_CHANGES = {"max_steps"}


class TrainError(UserError, RuntimeError):
    """Training cannot start or continue (bad input, or a run that went non-finite)."""


# --------------------------------------------------------------------------------------------
# everything that can be checked before a model exists
# --------------------------------------------------------------------------------------------
@dataclass
class Plan:
    cfg: TrainConfig
    model_cfg: ModelConfig
    ds_config: dict
    data_dir: Path
    out_dir: Path
    resume_from: Path | None  # OUT/ds/step-N when resuming from a DeepSpeed checkpoint (checked: train/resume.py)
    train_shards: object
    val_shards: object | None
    tokenizer: object


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def class_dropout_rate(cfg: TrainConfig, tokenizer) -> float:
    """data.class_dropout, or its default: 0.1 for a labelled dataset, 0 otherwise."""
    from jpeglm.train.data import DEFAULT_CLASS_DROPOUT

    if cfg.data.class_dropout is not None:
        return cfg.data.class_dropout
    return DEFAULT_CLASS_DROPOUT if tokenizer.num_classes else 0.0


def prepare(cfg: TrainConfig, data_dir, out_dir, resume: bool = False, config_base: Path | None = None) -> Plan:
    """Validate config, data, tokenizer and output dir; raise ConfigError/ShardError/TrainError."""
    from jpeglm.shards import ShardError, ShardSet

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    model_cfg = resolve_model_config(cfg, config_base)
    from jpeglm.train.distributed import fill_deepspeed_config

    try:
        ds_config = fill_deepspeed_config(
            resolve_deepspeed_config(cfg, config_base), micro_batch=cfg.optim.micro_batch,
            grad_accum=cfg.optim.grad_accum, grad_clip=cfg.optim.grad_clip, precision=cfg.precision,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.data.seq_len > model_cfg.max_position_embeddings:
        raise TrainError(
            f"data.seq_len={cfg.data.seq_len} exceeds the model's max_position_embeddings="
            f"{model_cfg.max_position_embeddings}; lower data.seq_len or raise model_overrides.max_position_embeddings"
        )
    if not data_dir.is_dir():
        raise ShardError(f"{data_dir}: no such dataset directory (make one with `jpeglm prep`)")
    train_shards = ShardSet(data_dir, "train")
    if len(train_shards) == 0:
        raise ShardError(f"{data_dir}: the train split has no records")
    val_shards = ShardSet(data_dir, "val") if "val" in train_shards.manifest["splits"] else None
    try:  # the codec must rebuild (a known name, valid params, its files inside the dataset)
        train_shards.codec()
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{data_dir / 'manifest.json'}: its codec cannot be rebuilt ({e}); re-run `jpeglm prep`") from e
    tokenizer = train_shards.tokenizer()
    vocab = int(tokenizer.vocab_size)
    declared = train_shards.manifest["tokenizer"].get("vocab_size")
    if declared is not None and int(declared) != vocab:
        raise TrainError(f"{data_dir}: the manifest says vocab_size {declared}, its tokenizer/ has {vocab}")
    if model_cfg.vocab_size is not None and model_cfg.vocab_size != vocab:
        raise TrainError(
            f"the model config pins vocab_size={model_cfg.vocab_size} but the dataset's tokenizer has {vocab} tokens; "
            "leave vocab_size unset (it is taken from the tokenizer)"
        )
    for shards in (train_shards, val_shards):  # every shard, as it opens: never a crash at step N
        if shards is not None:
            shards.check_ids(vocab)
    if cfg.data.class_dropout and not tokenizer.num_classes:
        raise TrainError(f"data.class_dropout={cfg.data.class_dropout} needs a labelled dataset (jpeglm prep --labels); "
                         f"{data_dir} has no classes")
    if cfg.data.packing == "pad" and cfg.data.seq_len < 3:
        raise TrainError("pad packing needs seq_len >= 3 (BOS, a token, EOS)")

    resume_from = None
    cfg_file = out_dir / "config.yaml"
    has_run = cfg_file.is_file() or (out_dir / "ds").is_dir() or (out_dir / "checkpoints").is_dir()
    if has_run:
        old = load_yaml(cfg_file) if cfg_file.is_file() else {}
        diffs = config_differences(old, to_dict(cfg)) if old else ["config.yaml missing"]
        if not resume:
            what = f"a different run (config differs in: {', '.join(diffs)})" if diffs else "a run with this config"
            raise TrainError(f"{out_dir} already holds {what}; pass --resume to continue it, or choose another --out")
        if diffs:
            raise TrainError(f"cannot --resume {out_dir}: its config differs in {', '.join(diffs)}")
        if (out_dir / "ds" / "latest").is_file():
            from jpeglm.train.resume import checked_tag

            resume_from = out_dir / "ds" / checked_tag(out_dir / "ds")  # DeepSpeed unpickles: only our own state
    return Plan(cfg, model_cfg, ds_config, data_dir, out_dir, resume_from, train_shards, val_shards, tokenizer)


# --------------------------------------------------------------------------------------------
# model, optimiser, schedule
# --------------------------------------------------------------------------------------------
def attention_implementation(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def llama_config(model_cfg: ModelConfig, tokenizer, attn: str):
    from transformers import LlamaConfig

    fields = to_dict(model_cfg)
    fields.pop("vocab_size")
    cfg = LlamaConfig(
        vocab_size=int(tokenizer.vocab_size),
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        use_cache=False,
        **fields,
    )
    cfg._attn_implementation = attn
    return cfg


def lr_lambda(warmup: int, max_steps: int, min_ratio: float):
    """Linear warmup to 1, then cosine to min_ratio at max_steps (as a multiplier of optim.lr)."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return f


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices only: norms (1-D) are left alone, as in Llama's recipe."""
    def ndim(p):  # a ZeRO-3 partitioned parameter is 1-D locally; ds_shape is its real shape
        return len(getattr(p, "ds_shape", p.shape))

    decay = [p for p in model.parameters() if p.requires_grad and ndim(p) >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and ndim(p) < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}) if g["params"]]


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    engine: object
    start_step: int
    last_step: int
    losses: dict


def train(cfg: TrainConfig, data_dir, out_dir, resume: bool = False, config_base: Path | None = None) -> TrainResult:
    """Train into `out_dir`, holding its lock (jpeglm.lock: a second run into it is refused)."""
    import contextlib

    from jpeglm.lock import OutputLock

    main = int(os.environ.get("RANK", "0")) == 0  # set by the launchers; a plain run is rank 0
    with OutputLock(out_dir, "jpeglm train") if main else contextlib.nullcontext():
        return _train(cfg, data_dir, out_dir, resume, config_base)


def _train(cfg: TrainConfig, data_dir, out_dir, resume: bool, config_base: Path | None) -> TrainResult:
    import torch
    from transformers import LlamaForCausalLM

    from jpeglm.checkpoint import export_hf, export_name
    from jpeglm.train import distributed
    from jpeglm.train.data import BatchOrder, ClassDropout, build_sequences, collate, val_records

    plan = prepare(cfg, data_dir, out_dir, resume, config_base)
    dist = distributed.init()
    out = plan.out_dir
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        # filling every new tensor with NaN (the deterministic-mode default) costs ~30x on CPU
        # and buys nothing here: no op reads memory it did not write
        torch.utils.deterministic.fill_uninitialized_memory = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    tok = plan.tokenizer
    seqs = build_sequences(plan.train_shards, cfg.data.packing, cfg.data.seq_len, tok.pad_id, cfg.data.long_records)
    dropout_rate = class_dropout_rate(cfg, tok)
    if dropout_rate > 0:  # classifier-free guidance: the class token becomes the null class at this rate
        seqs = ClassDropout(seqs, plan.train_shards, tok, dropout_rate, cfg.seed)
    vals, val_long = ([], 0)
    if plan.val_shards is not None and len(plan.val_shards):
        # whole records up to the model's context, not data.seq_len: bits per byte needs whole
        # records, and a 32x32 pixel record (1024 codes + BOS + EOS) must not vanish from
        # validation because training chunks are 1024 tokens long
        vals, val_long = val_records(plan.val_shards, plan.model_cfg.max_position_embeddings, cfg.eval.max_records)
    order = BatchOrder(len(seqs), cfg.optim.micro_batch, cfg.optim.grad_accum, dist.world_size, cfg.seed)

    ds_config = plan.ds_config
    hf_cfg = llama_config(plan.model_cfg, tok, attention_implementation(cfg.attn_implementation))
    model = distributed.build_model(LlamaForCausalLM, hf_cfg, ds_config)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = distributed.build_optimizer(
        param_groups(model, cfg.optim.weight_decay), ds_config, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps
    )
    schedule = lr_lambda(cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.min_lr_ratio)
    # a factory: DeepSpeed builds the scheduler on its wrapped optimizer (ZeRO regroups params)
    engine, optimizer, sched = distributed.initialize(
        model, optimizer, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), ds_config
    )

    start = 0
    if plan.resume_from is not None:
        path, client = engine.load_checkpoint(str(plan.resume_from.parent), tag=plan.resume_from.name)
        if path is None:
            raise TrainError(f"could not load the DeepSpeed checkpoint in {plan.resume_from}")
        start = int(client["step"])
        try:
            order.load_state_dict(client["data"])
        except ValueError as e:
            raise TrainError(f"cannot --resume {out}: {e}") from e
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        _truncate_log(out / "log.jsonl", start)
    distributed.barrier()

    logger = _Logger(out, dist.is_main, start, cfg.max_steps)
    logger.note(
        f"{sum(p.ds_numel if hasattr(p, 'ds_numel') else p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{len(seqs)} sequences of {cfg.data.seq_len} ({cfg.data.packing}), world {dist.world_size}, "
        f"ZeRO-{distributed.zero_stage(engine)}, {cfg.precision}, {hf_cfg._attn_implementation}"
        + (f", resumed at step {start}" if start else "")
        + (f"; {getattr(seqs, 'num_long', 0)} train records longer than seq_len ({cfg.data.long_records})" if cfg.data.packing == "pad" else "")
        + (f"; {val_long} val records longer than the model's context left out of validation" if val_long else "")
    )
    meta = {
        "codec": plan.train_shards.manifest["codec"],
        "tokenizer": tok.to_config(),
        "train": to_dict(cfg),
        "model": {**to_dict(plan.model_cfg), "vocab_size": int(tok.vocab_size)},
        "data": str(plan.data_dir.resolve()),
    }
    if start and _latest_export(out) != export_name(start):
        # killed between the DeepSpeed save and its export: the export is made now, from that state
        state = distributed.full_state_dict(engine)
        if dist.is_main:
            export_hf(out, start, hf_cfg, state, tok, meta, cfg.keep_last)
        distributed.barrier()
    losses = {}
    engine.train()
    for step in range(start + 1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        lr = sched.get_last_lr()[0]
        loss_sum, n_tok = 0.0, 0
        if isinstance(seqs, ClassDropout):
            seqs.epoch = order.epoch  # the drops depend on (seed, epoch, record): resumed runs see the same
        for idx in order.next_step(dist.rank):
            batch = {k: v.to(dist.device) for k, v in collate([seqs[i] for i in idx]).items()}
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach().float())
            n_tok += int(batch["attention_mask"].sum())
        loss_sum, n_tok = distributed.all_reduce_sum([loss_sum, n_tok], dist.device)
        loss = loss_sum / (cfg.optim.grad_accum * dist.world_size)
        if not math.isfinite(loss):
            raise TrainError(f"loss is {loss} at step {step}; stopping without checkpointing (the last good one is kept)")
        losses[step] = loss
        gn = engine.get_global_grad_norm()
        rec = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": n_tok / (time.perf_counter() - t0),
               "grad_norm": None if gn is None else float(gn), "tokens": int(n_tok)}
        if (cfg.eval.interval and step % cfg.eval.interval == 0) or step == cfg.max_steps:
            if vals:
                rec.update(validate(engine, vals, cfg.eval.batch_size, tok.pad_id, dist))
        logger.step(rec, force=step % cfg.log_interval == 0 or step == cfg.max_steps or "val_loss" in rec)
        if step % cfg.ckpt_interval == 0 or step == cfg.max_steps:
            save_checkpoint(engine, out, step, order, cfg, hf_cfg, tok, meta, dist)
    logger.close()
    return TrainResult(engine, start, cfg.max_steps, losses)


def validate(engine, records, batch_size: int, pad_id: int, dist) -> dict:
    """Mean NLL per token, bits per byte and bits per pixel over whole val records.

    Every rank scores a disjoint slice but runs the same number of forward passes (empty slots
    get a zero-weight dummy), because under ZeRO-3 a forward pass is a collective."""
    import torch

    from jpeglm.train import distributed
    from jpeglm.train.data import pad_record

    mine = records[dist.rank :: dist.world_size]
    n_batches = math.ceil(len(records) / (dist.world_size * batch_size))
    nll = toks = nbytes = npix = 0.0
    engine.eval()
    with torch.no_grad():
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            weight = 1.0 if chunk else 0.0
            chunk = chunk or records[:1]
            length = max(len(r.ids) for r in chunk)
            batch = [pad_record(r.ids, length, pad_id) for r in chunk]
            ids = torch.stack([x["input_ids"] for x in batch]).to(dist.device)
            labels = torch.stack([x["labels"] for x in batch]).to(dist.device)
            mask = torch.stack([x["attention_mask"] for x in batch]).to(dist.device)
            logits = engine(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            valid = target != -100
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll += weight * float(-(logp * valid).sum())
            toks += weight * float(valid.sum())
            nbytes += weight * sum(r.n_bytes for r in chunk)
            npix += weight * sum(r.n_pixels for r in chunk)
    engine.train()
    nll, toks, nbytes, npix = distributed.all_reduce_sum([nll, toks, nbytes, npix], dist.device)
    bits = nll / math.log(2)
    return {"val_loss": nll / max(toks, 1), "val_bpb": bits / nbytes if nbytes else None,
            "val_bpp": bits / npix if npix else None, "val_records": len(records)}


def save_checkpoint(engine, out: Path, step: int, order, cfg: TrainConfig, hf_cfg, tokenizer, meta: dict, dist) -> None:
    """DeepSpeed state (for --resume) then the HF export; both collective, exports on rank 0."""
    from jpeglm.checkpoint import export_hf, export_name, prune
    from jpeglm.train import distributed
    from jpeglm.train.resume import record_files, write_latest

    tag = export_name(step)
    client = {"step": step, "data": order.state_dict()}
    # ds/latest is ours to write, after the record of what was saved (train/resume.py)
    try:
        engine.save_checkpoint(str(out / "ds"), tag=tag, client_state=client, save_latest=False)
        distributed.barrier()
        if dist.is_main:
            record_files(out / "ds", tag)
            write_latest(out / "ds", tag)
    except OSError as e:
        raise TrainError(f"could not save the DeepSpeed checkpoint {out / 'ds' / tag}: {e}{disk_full_hint(e)}; "
                         "the previous checkpoint is kept (--resume continues from it)") from e
    state = distributed.full_state_dict(engine)
    if dist.is_main:
        export_hf(out, step, hf_cfg, state, tokenizer, meta, cfg.keep_last)
        prune(out / "ds", cfg.keep_last, protect=tag)
    distributed.barrier()


def _latest_export(out: Path) -> str | None:
    from jpeglm.checkpoint import LATEST

    try:
        return (out / "checkpoints" / LATEST).read_text().strip() or None
    except OSError:
        return None


def _truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines past the checkpoint: those steps are about to be redone."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line torn by a kill or a full disk: that step is redone anyway
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class _Logger:
    """tqdm bar + TensorBoard + log.jsonl on rank 0; silent elsewhere."""

    def __init__(self, out: Path, main: bool, start: int, total: int):
        self.main = main
        if not main:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.tb = SummaryWriter(str(out / "tensorboard"))
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
        self.file = open(out / "log.jsonl", "a")

    def note(self, text: str) -> None:
        if self.main:
            self.bar.write(text)

    def step(self, rec: dict, force: bool) -> None:
        if not self.main:
            return
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"train/{k}" if not k.startswith("val_") else f"val/{k[4:]}", v, rec["step"])
        if force:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.main:
            self.bar.close()
            self.tb.close()
            self.file.close()
