"""The trainer's settings, typed: `TrainSettings.from_cfg(cfg)` checks a train config once (conf/train.yaml,
or a pruner's, whose own section is not the trainer's) and the trainer, `engine.stages` and the pruners
read attributes instead of string keys. A pruner's run is `dataclasses.replace(settings, epochs=3)`,
`settings.at_lr(0.01)` or `settings.with_model_kwargs(shortcut_bn=True)`, not an edit of `"optim.lr"`.

The groups whose own packages read them (`data` by data.build_loader, `optim`/`sched` by engine.optim,
`conversion` by artifacts.ConversionPolicy) stay the config nodes those packages take.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import check_values, model_kwargs

GROUPS = ("data", "optim", "sched", "conversion")


@dataclass(frozen=True)
class ModelSettings:
    """conf/train.yaml's `model`: the registry name, its constructor kwargs, the file to start from, the form."""
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    convert: str | None = None


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of conf/train.yaml (see its comments); `final` is `final.enabled`."""
    model: ModelSettings
    data: DictConfig
    optim: DictConfig
    sched: DictConfig
    conversion: DictConfig
    epochs: int
    batch_size: int | None
    global_batch_size: int | None
    workers: int | None
    device: str
    dist_timeout_min: float
    amp: str
    channels_last: bool
    compile: bool
    sync_bn: bool
    ema_decay: float
    grad_clip: float
    label_smoothing: float
    seed: int
    deterministic: bool
    output_dir: str
    run_name: str | None
    resume: str | None
    ckpt_every_steps: int
    log_every_steps: int
    max_steps_per_epoch: int | None
    progress: bool
    nonfinite_loss: str
    final: bool
    hooks: dict[str, dict[str, Any]]

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> TrainSettings:
        """The checked settings of a composed train config; sections of other jobs (prune.*) are left out."""
        check_values(cfg)
        plain = {f.name: cfg.get(f.name) for f in fields(cls) if f.name not in ("model", "final", "hooks", *GROUPS)}
        groups = {g: OmegaConf.create(OmegaConf.to_container(cfg[g], resolve=True)) for g in GROUPS}
        model = ModelSettings(cfg.model.name, model_kwargs(cfg.model), cfg.model.get("init"), cfg.model.get("convert"))
        hooks = OmegaConf.to_container(cfg.hooks, resolve=True) if cfg.get("hooks") else {}
        return cls(model=model, **groups, **plain, final=bool(cfg.final.enabled), hooks=hooks)

    def to_dict(self) -> dict[str, Any]:
        """The settings in conf/train.yaml's layout: what config.yaml and a checkpoint's `config` hold."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update({g: OmegaConf.to_container(out[g], resolve=True) for g in GROUPS})
        out.update(model=asdict(self.model), final={"enabled": self.final})
        return out

    def at_lr(self, lr: float) -> TrainSettings:
        """The same run at another base learning rate (`optim.lr`)."""
        return replace(self, optim=OmegaConf.merge(self.optim, {"lr": float(lr)}))

    def with_model_kwargs(self, **kwargs: Any) -> TrainSettings:
        """The same run with constructor arguments of the model added or replaced."""
        return replace(self, model=replace(self.model, kwargs={**self.model.kwargs, **kwargs}))
