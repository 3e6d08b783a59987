"""The one pruning job every pruner plugs into (`prune.py`: network slimming, `amc.py`: RM + AMC,
`resrep.py`: ResRep):

    settings -> run folder probed -> base model -> reference (stats, top-1) -> budget ->
    per form (residual | rm): start model -> select + apply under the budget -> finish_form
    (pruned.pt, evaluate, fine-tune, measure) -> flag a miss -> report entry and comparison row ->
    report.json / report.md

A `Pruner` says only what differs between methods; this module does the rest once, so every
method's forms are prepared, costed, flagged, written and reported alike.
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

import artifacts
import engine.distributed as D
from engine import stages
from engine.faults import probe_run_dir

from .budget import Budget
from .common import Finished, check_stored_model, finish_form, to_prunable_plain, top1
from .report import device_line, missed, model_stats, warn_missed, write_report
from .row import Row


@dataclass
class Job:
    """What every form of one run reads."""
    cfg: DictConfig
    base: artifacts.Artifact          # the trained residual model both forms start from
    out: str                          # this budget's folder: report.json, report.md, <form>/
    val: Any                          # the validation loader every top-1 is measured on
    reference: dict[str, Any]         # model_stats + top1 of the base model
    budget: Budget | None             # None: the pruner selects by its own criterion (slimming's threshold)
    state: Any = None                 # the pruner's own run-wide state (Pruner.prepare)

    @property
    def size(self) -> int:
        return self.base.spec.input_size


@dataclass
class Selection:
    """A form's pruned model, as a pruner's `select` returns it."""
    model: nn.Module
    removed: int                                          # channels removed (0 is flagged "pruned nothing")
    meta: dict[str, Any] = field(default_factory=dict)    # written into pruned.pt / finetuned.pt
    extra: dict[str, Any] = field(default_factory=dict)   # what the pruner's report entry reads


@dataclass
class Form:
    """One form after the shared steps."""
    name: str                         # residual | rm
    start: artifacts.Artifact         # the unpruned model it was selected from
    before: dict[str, Any]            # model_stats + top1 of `start` (the reference for the residual form)
    target: float | None              # the absolute cost the budget allows it (None: no budget)
    cost: float | None                # the pruned model's cost in the budget's kind
    selection: Selection
    done: Finished
    flag: str | None                  # what it missed (report.missed); None: nothing


class Pruner(ABC):
    """What differs between pruning methods; `run(cfg, pruner)` does everything else."""
    method: str                       # the rows' method: slimming | amc | resrep
    section: str                      # its config section (prune | amc | resrep), also the logger's name
    schema: str                       # report.json's schema
    forms_key = "forms"               # the report's key of the per-form entries
    hint = ""                         # what to change when a form misses its budget

    @abstractmethod
    def check_settings(self, cfg: DictConfig) -> None:
        """Every setting, before any work."""

    @abstractmethod
    def root(self, cfg: DictConfig) -> str:
        """The run's folder (probed for writing before any work)."""

    @abstractmethod
    def checkpoint(self, cfg: DictConfig) -> str:
        """The trained residual model's file: the one the settings name, else a training run's (a
        re-run resumes or reuses it)."""

    def base_model(self, cfg: DictConfig) -> artifacts.Artifact:
        """The trained residual model, checked against the run's model and data."""
        path = self.checkpoint(cfg)
        base = artifacts.load(path)
        check_stored_model(base.spec, cfg, path)
        return base

    @abstractmethod
    def out_dir(self, cfg: DictConfig, base: artifacts.Artifact) -> str:
        """This budget's folder under root()."""

    @abstractmethod
    def budget(self, cfg: DictConfig, input_size: int) -> Budget | None: ...

    @abstractmethod
    def select(self, job: Job, form: str, start: artifacts.Artifact, form_dir: str,
               target: float | None) -> Selection:
        """Select and apply channels of `start` under `target` (the budget's absolute cost)."""

    @abstractmethod
    def header(self, job: Job) -> dict[str, Any]:
        """The report's keys of this method (settings, base file), besides the shared ones."""

    @abstractmethod
    def entry(self, job: Job, form: Form) -> dict[str, Any]:
        """The form's report entry (and its log line)."""

    @abstractmethod
    def budget_text(self, job: Job) -> str:
        """What the run was asked for, in words (the rows' `budget`)."""

    to_markdown: Callable[[dict[str, Any]], str]

    def label(self, form: str) -> str:
        return form

    def prepare(self, job: Job) -> Any:
        """Run-wide state `select` reads (Job.state), built once before the forms."""
        return None

    def start(self, job: Job, form: str) -> artifacts.Artifact:
        """The model a form is pruned from: the base model, or its RM form with BN kept (verified)."""
        if form == "residual":
            return job.base
        return to_prunable_plain(job.cfg, job.base, job.cfg[self.section].calib_batches)

    def finish_report(self, job: Job, report: dict[str, Any], forms: dict[str, Form]) -> None:
        """Anything the report adds after every form (AMC's reward curves)."""
        return None


def run(cfg: DictConfig, pruner: Pruner) -> dict[str, Any]:
    """The whole job of `pruner` for one budget; returns the report (also written as report.json/.md)."""
    pruner.check_settings(cfg)
    s = cfg[pruner.section]
    probe_run_dir(pruner.root(cfg), f"{pruner.section}.out_dir" if s.out_dir else "output_dir", "the output folder")
    base = pruner.base_model(cfg)
    val = stages.build_val_loader(cfg)
    size = base.spec.input_size
    reference = {**model_stats(base.model, size, s.bench), "top1": top1(base.model, val, cfg, "unpruned model")}
    job = Job(cfg, base, pruner.out_dir(cfg, base), val, reference, pruner.budget(cfg, size))
    job.state = pruner.prepare(job)
    report = {"schema": pruner.schema, "model": cfg.model.name, "data": cfg.data.name, **pruner.header(job),
              "device": device_line(s.bench), "bench": OmegaConf.to_container(s.bench), "reference": reference,
              "budget": job.budget.report(base.model) if job.budget is not None else None, pruner.forms_key: {}}
    residual_cost = job.budget.cost(base.model) if job.budget is not None else None
    forms = {}
    for name in s.forms:
        forms[name] = prune_form(job, pruner, name, residual_cost)
        report[pruner.forms_key][name] = pruner.entry(job, forms[name])
    report["rows"] = [row(job, pruner, form) for form in forms.values()]
    pruner.finish_report(job, report, forms)
    if D.is_main():
        paths = write_report(report, job.out, pruner.to_markdown)
        logging.getLogger(f"rmnet.{pruner.section}").info(f"wrote {paths[0]} and {paths[1]}")
    return report


def prune_form(job: Job, pruner: Pruner, name: str, residual_cost: float | None) -> Form:
    """One form: its start model, selection under the budget, the shared finish, the flag."""
    cfg, budget, s = job.cfg, job.budget, job.cfg[pruner.section]
    form_dir = os.path.join(job.out, name)
    os.makedirs(form_dir, exist_ok=True)
    start = pruner.start(job, name)
    before = job.reference if start is job.base else {**model_stats(start.model, job.size, s.bench),
                                                       "top1": top1(start.model, job.val, cfg, "RM plain")}
    target = budget.target(residual_cost, budget.cost(start.model)) if budget is not None else None
    sel = pruner.select(job, name, start, form_dir, target)
    cost = budget.cost(sel.model) if budget is not None else None
    flag = missed(sel.removed, cost, target, budget.kind if budget is not None else "macs")
    warn_missed(logging.getLogger(f"rmnet.{pruner.section}"), pruner.label(name), flag, pruner.hint)
    meta = {"form": name, **({"verify": start.meta["verify"]} if "verify" in start.meta else {}), **sel.meta}
    spec = replace(start.spec, pruned=start.spec.form != "plain")
    done = finish_form(cfg, pruner.section, sel.model, spec, form_dir, job.val, job.size, name, **meta)
    return Form(name, start, before, target, cost, sel, done, flag)


def row(job: Job, pruner: Pruner, form: Form) -> dict[str, Any]:
    """The form as a comparison row (pruning.compare merges every report's rows): the final model's
    file, size, speed and top-1."""
    after, budget = form.done.stats, job.budget
    return Row(pruner.method, form.name, job.cfg.model.name, job.cfg.data.name, pruner.budget_text(job), form.target,
               after["params"], after["macs"], form.before.get("top1"), form.done.top1_pruned,
               form.done.top1_finetuned, after["img_s"], form.done.path, form.flag,
               budget_kind=budget.kind if budget is not None else "criterion", speeds=after.get("speeds", {})).as_dict()
