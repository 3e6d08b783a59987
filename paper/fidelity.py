"""docs/FIDELITY.md: every reproduction recipe, setting by setting, against the paper and the authors' code.

    .venv/bin/python -m paper.fidelity            # rewrite docs/FIDELITY.md
    .venv/bin/python -m paper.fidelity --check    # exit 1 if it is stale or a difference has no stated reason

The recipes are composed with Hydra's compose API through train.py's config (a recipe's own settings are
what every entry point runs); keys a pruning recipe leaves unset come from its entry point's config. What
each value should be, and why ours may differ, is `paper.fidelity_sources`.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from dataclasses import dataclass

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

import models
from models.complexity import paper_flops

from .fidelity_sources import GROUPS, NO_SOURCE, Group, Setting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(ROOT, "conf")
DOC = os.path.join(ROOT, "docs", "FIDELITY.md")
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}
V100_FLOPS = 5.15e12   # docs/reproducing-the-paper.md's rule: the paper's ResNet-50 rate, 1252 img/s x 4.11 G
_UNSET = object()


@dataclass
class Line:
    setting: Setting
    ours: str
    status: str
    problem: str = ""   # a difference without a reason, or a reason for a value that matches


def compose_group(group: Group) -> list[DictConfig]:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return [compose(group.config, overrides=list(r)) for r in group.recipes]


def zero_gamma(cfg: DictConfig):
    """The model's zero-γ initialisation of each block's last BN (constructor default or model.kwargs),
    or "n/a" for a family without one."""
    kwargs = cfg.model.get("kwargs")
    kwargs = OmegaConf.to_container(kwargs) if isinstance(kwargs, DictConfig) else {}
    with torch.device("meta"):
        model = models.create_model(cfg.model.name, num_classes=cfg.data.num_classes, stem=cfg.data.stem)
    params = inspect.signature(type(model).__init__).parameters
    for name in ("zero_init_last_bn", "zero_init_residual"):
        if name in params:
            return kwargs.get(name, params[name].default)
    return "n/a"


def value(cfg: DictConfig, key: str, entry: DictConfig | None):
    if key == "zero_gamma":
        return zero_gamma(cfg)
    if key == "runs":
        return f"1 (seed {cfg.seed})"
    v = OmegaConf.select(cfg, key, default=_UNSET)
    if v is _UNSET and entry is not None:
        v = OmegaConf.select(entry, key, default=_UNSET)
    if v is _UNSET:
        raise KeyError(f"{key} is in neither the composed recipe nor its entry point's config")
    return OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v


def fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _label(recipe: tuple[str, ...], cfg: DictConfig) -> str:
    return " ".join(o.removeprefix("experiment=") for o in recipe) or cfg.model.name


def _setting_values(s: Setting, group: Group, cfgs: list[DictConfig], entry) -> list[tuple[str, object, object]]:
    """(recipe, ours, ref) per recipe the setting applies to (a per-family ref skips other families)."""
    out = []
    for recipe, cfg in zip(group.recipes, cfgs):
        ours = [value(cfg, k, entry) for k in s.keys]
        ours = ours[0] if len(ours) == 1 else ours
        ref = s.ref
        if isinstance(ref, dict):
            family = models.model_family(cfg.model.name)
            if family not in ref:
                continue
            ref = ref[family]
        out.append((_label(recipe, cfg), ours, list(ref) if isinstance(ref, tuple) else ref))
    return out


def check_setting(s: Setting, group: Group, cfgs: list[DictConfig], entry) -> Line | None:
    vals = _setting_values(s, group, cfgs, entry)
    if not vals:
        return None
    shown = {fmt(o) for _, o, _ in vals}
    ours = shown.pop() if len(shown) == 1 else "; ".join(f"{m}: {fmt(o)}" for m, o, _ in vals)
    if s.ref is NO_SOURCE:
        return Line(s, ours, f"no source fixes it: {s.reason}", "" if s.reason else "no reason stated")
    if all(o == r for _, o, r in vals):
        return Line(s, ours, "match", f"reason stated, but it matches: {s.reason}" if s.reason else "")
    if s.reason:
        return Line(s, ours, s.reason)
    return Line(s, ours, "**differs, no reason stated**", f"ours {ours} differs from {fmt(s.ref)}")


def gpu_hours(cfg: DictConfig) -> float:
    """Expected V100-hours by the rule of docs/reproducing-the-paper.md: 3 x training-form FLOPs x images x
    epochs / 5.15 TFLOP/s."""
    with torch.device("meta"):
        model = models.create_model(cfg.model.name, num_classes=cfg.data.num_classes, stem=cfg.data.stem).eval()
    flops = paper_flops(model, cfg.data.input_size)
    return 3 * flops * TRAIN_IMAGES[cfg.data.name] * cfg.epochs / V100_FLOPS / 3600


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def _entry_note(group: Group, cfgs: list[DictConfig]) -> list[str]:
    """Where the recipe's own entry point composes another model or dataset today, say so."""
    if group.entry is None:
        return []
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        entry_cfgs = [compose(group.entry, overrides=list(r)) for r in group.recipes]
    return [f"- `{group.entry}.py {' '.join(r)}` composes {e.model.name} on {e.data.name} today, not the "
            f"recipe's {c.model.name} on {c.data.name} (issue 23 item 1, fixed elsewhere)."
            for r, c, e in zip(group.recipes, cfgs, entry_cfgs)
            if (e.model.name, e.data.name) != (c.model.name, c.data.name)]


def render_group(group: Group) -> tuple[list[str], list[str]]:
    """The group's Markdown section and its problems."""
    cfgs = compose_group(group)
    entry = OmegaConf.load(os.path.join(CONF_DIR, f"{group.entry}.yaml")) if group.entry else None
    lines = [line for s in group.settings if (line := check_setting(s, group, cfgs, entry))]
    composed = ", ".join(f"`{' '.join(r) or f'{group.config}.py'}`: {c.model.name} on {c.data.name}"
                         for r, c in zip(group.recipes, cfgs))
    out = [f"## {group.title}", "", f"Follows: {group.source}.", "", f"Composes: {composed}.", ""]
    notes = _entry_note(group, cfgs)
    out += notes + ([""] if notes else [])
    if group.gpu_hours:
        hours = ", ".join(f"{c.model.name} {_hours(gpu_hours(c))}" for c in cfgs)
        out += [f"Expected V100-hours per run (the rule above, {cfgs[0].epochs} epochs): {hours}.", ""]
    out += ["| setting | paper | authors' code | ours | match, or the reason |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {ln.setting.label} | {ln.setting.paper} | {ln.setting.authors} | {ln.ours} | {ln.status} |"
            for ln in lines]
    return out + [""], [f"{group.title}, {ln.setting.label}: {ln.problem}" for ln in lines if ln.problem]


_HEAD = """# Fidelity: each reproduction recipe against the paper and the authors' code

Generated by `python -m paper.fidelity` from the composed recipes (`conf/experiment/`) and
`paper/fidelity_sources.py`; do not edit by hand (`tests/test_fidelity.py` fails when this file is
stale). Columns: the paper's words (section and phrase; the paper is the ICLR submission in the seeds),
the authors' value with repository@commit, file and line, what our recipe composes to, and "match" or
the reason for the difference. Expected GPU-hours follow the rule of
[Reproducing the paper](reproducing-the-paper.md#expected-gpu-hours) and are given for the recipes that name them.
"""


def render(groups: tuple[Group, ...] | None = None) -> tuple[str, list[str]]:
    parts, problems = [_HEAD], []
    for group in GROUPS if groups is None else groups:
        text, probs = render_group(group)
        parts.append("\n".join(text))
        problems += probs
    return "\n".join(parts).rstrip() + "\n", problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that docs/FIDELITY.md is current")
    args = p.parse_args(argv)
    text, problems = render()
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.check:
        current = open(DOC).read() if os.path.isfile(DOC) else ""
        if current != text:
            print("docs/FIDELITY.md is stale: run `python -m paper.fidelity`", file=sys.stderr)
            return 1
    else:
        with open(DOC, "w") as f:
            f.write(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
