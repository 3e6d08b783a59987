"""The training loop: DDP, validation, checkpoints and resume, for a model it is given.

`Trainer(settings, model, spec).fit()` trains a built model (engine.stages builds it from the settings,
the pruners hand in pruned ones) on the loaders of `settings.data` (or ones passed in). Rank 0 decides the
run directory (a fresh `<model>-<data>-<timestamp>` or the run being resumed) and broadcasts it, so
all ranks agree; only rank 0 prints, writes TensorBoard scalars, `metrics.jsonl` and checkpoints.

Loop state is resumable at optimizer-step granularity: a checkpoint records epoch, the steps done
in that epoch, the global step, and every rank's RNG states; the `TrainSampler` restarts the epoch's
order after the batches already seen, and the schedule is a function of the global step.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Iterable

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from tqdm import tqdm

import data as datasets
from artifacts import CheckpointError, model_entries
from models import ModelSpec

from . import distributed as D
from .amp import autocast, check_amp, grad_scaler
from .checkpoint import link_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, per_process_batch
from .ema import EMA
from .faults import NonFiniteLossError, RunDirError, StopSignal, probe_run_dir
from .hooks import build_hooks
from .optim import build_optimizer, build_scheduler, scaled_lr
from .settings import TrainSettings
from .validation import evaluate

log = logging.getLogger("rmnet.train")
RECORDS = ("config.yaml", "train.log", "metrics.jsonl", "tb")   # what a run writes before its first checkpoint


class Trainer:
    def __init__(self, settings: TrainSettings, model: nn.Module, spec: ModelSpec, train_loader: Iterable | None = None,
                 val_loader: Iterable | None = None):
        """Train `model` (built identically on every rank; its description `spec` goes into the
        checkpoints) with `settings`; loaders default to `settings.data`'s, sharded over the ranks."""
        self.settings, self.spec = settings, spec
        self.device = D.setup(settings.device, settings.dist_timeout_min)
        self.amp = check_amp(settings.amp, self.device)
        self.rank, self.world = D.rank(), D.world_size()
        self.main = self.rank == 0
        torch.manual_seed(settings.seed + self.rank)   # per-rank augmentation streams
        # The data first: a missing dataset or a batch that does not fit fails before a run folder exists.
        self.batch_size = per_process_batch(settings, self.world)
        self.train_loader = train_loader or datasets.build_loader(settings.data, "train", self.batch_size, settings.workers,
                                                                  seed=settings.seed, device=self.device)
        self.val_loader = val_loader or datasets.build_loader(settings.data, "val", self.batch_size, settings.workers,
                                                              device=self.device)
        full = self.train_loader.sampler.num_samples // self.batch_size
        if full == 0:
            raise ConfigError(f"the batch of {self.batch_size} per process exceeds the "
                              f"{self.train_loader.sampler.num_samples} training samples per process; lower "
                              f"{'global_batch_size' if settings.global_batch_size else 'batch_size'}")
        self.steps_per_epoch = min(full, settings.max_steps_per_epoch or full)
        self.run_dir, resume_path = self._plan_run()
        self._setup_logging()
        torch.backends.cudnn.benchmark = not settings.deterministic
        if settings.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

        model = model.train().to(self.device)
        if settings.sync_bn and self.world > 1:
            if self.device.type != "cuda":
                raise ConfigError("sync_bn=true needs CUDA (SyncBatchNorm has no CPU/gloo kernel)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = EMA(model, settings.ema_decay) if settings.ema_decay > 0 else None
        self.global_batch = self.batch_size * self.world
        self.hooks = build_hooks(settings.hooks)
        own_groups = [group for hook in self.hooks.values() for group in hook.param_groups(model)]
        self.optimizer = build_optimizer(model, settings.optim, self.global_batch, own_groups)
        self.scheduler = build_scheduler(self.optimizer, settings.sched, self.steps_per_epoch, settings.epochs)
        self.scaler = grad_scaler(self.device, self.amp)
        self.mixup, self.criterion = self._loss(settings)

        self.train_model: nn.Module = model
        if self.world > 1:
            self.train_model = D.wrap_ddp(model, self.device)
        if settings.compile:
            self.train_model = torch.compile(self.train_model)

        self.epoch = self.step_in_epoch = self.step = 0
        self.timed = False
        self.best_top1 = float("-inf")
        self.stop = StopSignal(announce=self.main)
        self.progress = bool(settings.progress)
        # Non-finite losses are noticed without a host sync per step: the first bad step is kept on
        # the device and checked where the loop syncs anyway (log steps) and before every checkpoint.
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.recent_lr: dict[int, float] = {}
        if resume_path:
            self._resume(resume_path)
        self.tb = self._writer()
        if self.main:
            self._save_config()

    # --- set-up helpers --------------------------------------------------------------------------
    def _plan_run(self) -> tuple[str, str | None]:
        """(run directory, checkpoint to resume or None), decided on rank 0 and broadcast."""
        plan: tuple = ("", None, None)
        if D.is_main():
            try:
                plan = (*_choose_run(self.settings), None)
                probe_run_dir(plan[0])   # a full disk or a read-only folder fails now, not at the first save
            except (ConfigError, RunDirError) as e:
                plan = ("", None, str(e))
        run_dir, resume, error = D.broadcast_object(plan)
        if error:
            raise ConfigError(error)
        return run_dir, resume

    def _setup_logging(self) -> None:
        log.handlers.clear()
        log.propagate = False
        if not self.main:
            log.setLevel(logging.ERROR)
            return
        os.makedirs(self.run_dir, exist_ok=True)
        log.setLevel(logging.INFO)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(self.run_dir, "train.log"))):
            handler.setFormatter(fmt)
            log.addHandler(handler)

    def _loss(self, settings: TrainSettings):
        aug = settings.data.augment
        if aug.mixup > 0 or aug.cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            mixup = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=settings.label_smoothing,
                          num_classes=settings.data.num_classes)
            return mixup, SoftTargetCrossEntropy()
        return None, nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

    def _writer(self):
        if not self.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(self.run_dir, "tb"), purge_step=self.step or None)

    def _save_config(self) -> None:
        path = os.path.join(self.run_dir, "config.yaml")
        if not os.path.exists(path):   # once per run: a resumed run keeps the config it started with
            OmegaConf.save(OmegaConf.create(self.settings.to_dict()), path)

    # --- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            **model_entries(self.model, self.spec),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.module.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "best_top1": self.best_top1, "world_size": self.world,
            "hooks": {name: hook.state_dict() for name, hook in self.hooks.items()},
            "config": self.settings.to_dict()}

    def save(self, best: bool = False) -> None:
        """Write last.pt (and make best.pt the same file: a hard link, not a second serialisation);
        collective, because it gathers every rank's RNG states. Weights from a non-finite loss are
        never written (NonFiniteLossError instead)."""
        self.meet()
        rngs = D.gather_object(rng_state())
        if self.main:
            last = os.path.join(self.run_dir, "last.pt")
            path = last
            try:
                save_checkpoint(last, **self._state(), rng=rngs)
                if best:
                    path = os.path.join(self.run_dir, "best.pt")
                    link_checkpoint(last, path)
            except OSError as e:   # atomic: the previous file is still there
                raise CheckpointError(f"could not write {path} ({e.strerror or e}); the previous checkpoint "
                                      f"is intact. Free disk space or choose another output_dir, then "
                                      f"resume=auto") from None

    def meet(self) -> bool:
        """Collective, one all-reduce and one host sync: raise NonFiniteLossError if any rank has seen a
        NaN/Inf loss (nonfinite_loss=stop), else return whether any rank has received a stop signal."""
        none = torch.iinfo(torch.long).max
        flags = torch.stack([torch.where(self.first_bad_step < 0, none, self.first_bad_step),
                             torch.full((), -int(self.stop.signum is not None), dtype=torch.long, device=self.device)])
        if D.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        step, stop = flags.tolist()
        if step == none:
            self.recent_lr.clear()
            return stop < 0
        last = os.path.join(self.run_dir, "last.pt")
        lr = self.recent_lr.get(step)
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (lr {'unknown' if lr is None else f'{lr:g}'}); the weights after it "
            f"are not saved. Last good checkpoint: {last if os.path.isfile(last) else 'none yet'}. Lower optim.lr, "
            f"set grad_clip or pass nonfinite_loss=skip to skip such steps; resume=auto continues from last.pt")

    def _resume(self, path: str) -> None:
        blob = load_checkpoint(path)   # onto the CPU: load_state_dict moves each tensor to where it belongs
        try:
            self.model.load_state_dict(blob["model"])
            self.optimizer.load_state_dict(blob["optimizer"])
            self.scheduler.load_state_dict(blob["scheduler"])
            self.scaler.load_state_dict(blob["scaler"])
        except (KeyError, ValueError, RuntimeError) as e:
            stored = blob.get("model_spec") or blob.get("model_cfg") or {}
            raise CheckpointError(
                f"{path} does not fit this run ({stored.get('name')}, {stored.get('num_classes')} classes, "
                f"{stored.get('stem')} stem in the file; {str(e).strip().splitlines()[0]}): resume with the "
                f"settings in its run's config.yaml, or start a new run (another run_name)") from None
        if self.ema is not None:
            if blob.get("ema") is None:
                raise ConfigError(f"{path} was trained without EMA; resume it with ema_decay=0")
            # Files written before the count was saved: the EMA had been updated once per step.
            self.ema.load(blob["ema"], blob.get("ema_updates", blob["step"]))
        for name, state in (blob.get("hooks") or {}).items():   # files from before hooks had state: none
            if name in self.hooks:
                self.hooks[name].load_state_dict(state)
        self.epoch, self.step, self.step_in_epoch = blob["epoch"], blob["step"], blob["step_in_epoch"]
        self.best_top1 = blob["best_top1"]
        rngs = blob.get("rng") or []
        if len(rngs) == self.world:
            set_rng_state(rngs[self.rank])
        else:   # another world size: with the same global batch (global_batch_size) the data order is still exact,
            # augmentation is not
            log.warning(f"{path} holds RNG states of {len(rngs)} ranks, not {self.world}; reseeding instead")
            torch.manual_seed(self.settings.seed + self.rank + 7919 * self.step)
        log.info(f"resumed {path} at {self.position()}, best top-1 {self.best_top1:.2f}")

    # --- the loop ----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        settings = self.settings
        log.info(f"run {self.run_dir}: {self.spec.label} on {settings.data.name}, {self.world} process(es) on "
                 f"{self.device.type}, global batch {self.global_batch}, lr {scaled_lr(settings.optim, self.global_batch):g}, "
                 f"{self.steps_per_epoch} steps/epoch x {settings.epochs} epochs")
        with self.stop:
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        settings = self.settings
        while self.epoch < settings.epochs:
            start = time.perf_counter()
            train_loss, steps = self.train_epoch()
            val = self.validate()
            self.epoch += 1
            self.step_in_epoch = 0
            improved = val["top1"] > self.best_top1
            self.best_top1 = max(self.best_top1, val["top1"])
            self.save(best=improved)
            elapsed = time.perf_counter() - start
            if train_loss is not None:
                self._scalars({"train/epoch_loss": train_loss, "train/epoch_time": elapsed})
            self._record({"epoch": self.epoch, "step": self.step, "train_loss": train_loss, "train_steps": steps,
                          "val_top1": val["top1"],
                          "val_top5": val["top5"], "val_loss": val["loss"], "epoch_time": elapsed})
            log.info(f"epoch {self.epoch}/{settings.epochs}: {self._train_loss_text(train_loss, steps)}  val loss "
                     f"{val['loss']:.4f}  top-1 {val['top1']:.2f}  top-5 {val['top5']:.2f}  (best {self.best_top1:.2f})  "
                     f"{elapsed:.1f}s")
            if self.meet():   # a signal during validation or the save: the checkpoint is already written
                self.exit_preempted()
        return {"best_top1": self.best_top1, "run_dir": self.run_dir}

    def _train_loss_text(self, loss: float | None, steps: int) -> str:
        """The epoch's training loss; a resumed epoch says that it covers only the steps run since the resume."""
        if loss is None:
            return "train loss n/a (resumed after the epoch's last step)"
        if steps < self.steps_per_epoch:
            return f"train loss {loss:.4f} (its last {steps} of {self.steps_per_epoch} steps, resumed)"
        return f"train loss {loss:.4f}"

    def train_epoch(self) -> tuple[float | None, int]:
        """One epoch (or its rest, after a mid-epoch resume): the mean training loss of the steps run
        here (None if none were left) and their number. Between log steps a step only queues work on the
        device; at log steps the loss window is read and the ranks meet (non-finite check, stop flag)."""
        settings, loader = self.settings, self.train_loader
        if self.step_in_epoch >= self.steps_per_epoch:   # stopped after the last step, before validation
            return None, 0
        loader.sampler.set_epoch(self.epoch, start=self.step_in_epoch * self.batch_size)
        loader.generator.manual_seed(settings.seed + 1000 * self.epoch + self.rank)
        self.train_model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}",
                   dynamic_ncols=True, disable=None if self.main and self.progress else True)   # None: no bar off a terminal
        loss_sum = torch.zeros((), device=self.device)
        window = torch.zeros((), device=self.device)
        window_steps, steps_done, tick = 0, 0, time.perf_counter()
        for images, targets in loader:
            loss = self.train_step(images, targets)
            self.step += 1
            self.step_in_epoch += 1
            steps_done += 1
            window_steps += 1
            loss_sum += loss
            window += loss
            log_step = self.step % settings.log_every_steps == 0 or self.step_in_epoch == self.steps_per_epoch
            if log_step:
                self._log_window(window.item() / window_steps, window_steps, time.perf_counter() - tick, bar)
                window.zero_()
                window_steps, tick = 0, time.perf_counter()
            bar.update()
            for hook in self.hooks.values():
                hook.after_step(self)
            # One process polls its own flag every step (no sync); ranks agree on a stop only where they meet.
            if (self.meet() if log_step else (self.world == 1 and self.stop.signum is not None)):
                self.save()   # before validation: the checkpoint comes first when a deadline runs
                self.exit_preempted()
            if self.step_in_epoch >= self.steps_per_epoch:
                break
            if settings.ckpt_every_steps and self.step % settings.ckpt_every_steps == 0:
                self.save()
        bar.close()
        return D.all_reduce_sum(loss_sum).item() / (steps_done * self.world), steps_done

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward, backward, optimizer, schedule and EMA for one batch; the detached loss (0 for a skipped step)."""
        settings = self.settings
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        with autocast(self.device, self.amp):
            logits = self.train_model(images)
            loss = self.criterion(logits, targets)
        for hook in self.hooks.values():
            extra = hook.loss(self.model, logits, targets)
            if extra is not None:
                loss = loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        self.recent_lr[self.step + 1] = self.optimizer.param_groups[0]["lr"]
        skipped = self.skip_nonfinite(loss)
        if not skipped:
            self.scaler.scale(loss).backward()
            if settings.grad_clip > 0 or self.hooks:   # hooks and clipping see true gradients
                self.scaler.unscale_(self.optimizer)
            for hook in self.hooks.values():
                hook.after_backward(self.model)
            if settings.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], settings.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        # A skipped step adds 0 to the logged mean rather than NaN; skips are logged one by one.
        return loss.detach().float() if not skipped else torch.zeros((), device=self.device)

    def _log_window(self, mean: float, steps: int, seconds: float, bar: Any) -> None:
        img_s = steps * self.global_batch / seconds
        if not self.timed:
            self._estimate(steps, seconds)
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.4g}", img_s=f"{img_s:.3g}")
        self._scalars({"train/loss": mean, "train/lr": lr, "train/img_s": img_s})
        self._record({"step": self.step, "train_loss": mean, "lr": lr, "img_s": img_s})

    def _estimate(self, steps: int, seconds: float) -> None:
        """Once per process: the time the rest of the run takes at the first steps' pace."""
        self.timed = True
        left = (self.settings.epochs - self.epoch) * self.steps_per_epoch - self.step_in_epoch
        if left <= 0:
            return
        total = seconds / steps * left
        log.info(f"{seconds / steps:.3g} s/step: about {_duration(total)} for the {left} steps left "
                 f"({self.settings.epochs} epochs; validation not included)")

    def skip_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether this step's update is skipped: with nonfinite_loss=skip, when any rank's loss is
        NaN/Inf (one host sync per step); with `stop`, the step is only recorded for `meet`."""
        bad = ~torch.isfinite(loss.detach())
        if self.settings.nonfinite_loss == "stop":
            self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), self.step + 1, self.first_bad_step)
            return False
        if D.all_reduce_sum(bad.float()).item() == 0:
            return False
        log.warning(f"non-finite loss at step {self.step + 1} (lr {self.recent_lr[self.step + 1]:g}): "
                    f"update skipped (nonfinite_loss=skip)")
        return True

    def position(self) -> str:
        """Where the run stands, in the words of both the stop and the resume message."""
        return f"epoch {self.epoch + 1}/{self.settings.epochs}, {self.step_in_epoch} steps into it (global step {self.step})"

    def exit_preempted(self) -> None:
        last = os.path.join(self.run_dir, "last.pt")
        log.warning(f"stopped by a signal at {self.position()}; "
                    f"checkpoint {last}. Continue with resume={last} (or resume=auto)")
        raise SystemExit(self.stop.exit_code or 1)

    def eval_model(self) -> nn.Module:
        """The weights that are validated, checkpointed as best and converted: EMA if enabled."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> dict[str, float]:
        D.broadcast_buffers(self.model)
        if self.ema is not None:
            D.broadcast_buffers(self.ema.module)
        val = evaluate(self.eval_model(), self.val_loader, self.device, self.amp, self.settings.channels_last,
                       progress=self.progress, desc="val")
        self._scalars({"val/top1": val["top1"], "val/top5": val["top5"], "val/loss": val["loss"]})
        return val

    # --- rank-0 records ----------------------------------------------------------------------------
    def _scalars(self, values: dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, self.step)

    def _record(self, row: dict[str, Any]) -> None:
        if self.main:
            with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

    def close(self, failed: bool = False) -> None:
        """TensorBoard and the log files; the process group stays for what the caller does next. A run
        that `failed` before its first checkpoint (a corrupt image in the first batches) leaves no run
        folder: there is nothing in it to resume, and resume=auto would not find it either."""
        if self.tb is not None:
            self.tb.close()
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)
        if failed and self.main and not os.path.exists(os.path.join(self.run_dir, "last.pt")):
            for name in RECORDS:
                path = os.path.join(self.run_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            if not os.listdir(self.run_dir):   # a folder holding files of someone else's stays
                os.rmdir(self.run_dir)


def _choose_run(settings: TrainSettings) -> tuple[str, str | None]:
    """(run directory, checkpoint to resume): see `resume` and `run_name` in conf/train.yaml."""
    prefix = f"{settings.model.name}-{settings.data.name}-"
    if settings.resume not in (None, "auto"):
        return os.path.dirname(os.path.abspath(settings.resume)), settings.resume
    if settings.run_name:
        run_dir = os.path.join(settings.output_dir, settings.run_name)
        last = os.path.join(run_dir, "last.pt")
        if os.path.isfile(last):
            if settings.resume == "auto":
                return run_dir, last
            raise ConfigError(f"{run_dir} already holds a run (last.pt); pass resume=auto to continue it "
                              f"or choose another run_name")
        return run_dir, None
    if settings.resume == "auto" and os.path.isdir(settings.output_dir):
        candidates = [os.path.join(settings.output_dir, d, "last.pt") for d in os.listdir(settings.output_dir)
                      if d.startswith(prefix)]
        candidates = [c for c in candidates if os.path.isfile(c)]
        if candidates:
            last = max(candidates, key=os.path.getmtime)
            return os.path.dirname(last), last
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(settings.output_dir, prefix + stamp)
    suffix = 1
    while os.path.exists(run_dir):
        run_dir = os.path.join(settings.output_dir, f"{prefix}{stamp}-{suffix}")
        suffix += 1
    return run_dir, None


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"
