"""Mean ± std of a seeds sweep (Table 2 prints mean ± std over several runs).

    .venv/bin/python train.py -m experiment=table2_mobilenetv1_cifar10 seed=0,1,2 \\
        'run_name=table2_mobilenetv1_cifar10_s${seed}'
    .venv/bin/python -m paper.seeds checkpoints            # or the run directories themselves

Each argument is a run directory (its config.yaml and final.json, as train.py writes them) or a folder
whose subfolders are. Runs whose configs differ only in seed, run_name and the other keys of
`_PER_RUN` are one group; each group prints the residual and the plain (RM-converted) top-1 as mean ±
sample standard deviation (n - 1), with the seeds it averages. Runs without final.json (unfinished)
are skipped and named.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

from omegaconf import OmegaConf

# Keys that differ between the runs of one sweep without changing the experiment.
_PER_RUN = ("seed", "run_name", "output_dir", "resume", "workers", "progress", "device", "log_every_steps",
            "ckpt_every_steps", "dist_timeout_min")


def find_runs(paths: list[str]) -> tuple[list[str], list[str]]:
    """(finished run directories, unfinished ones) under `paths` (each a run directory or a folder of them)."""
    finished, unfinished = [], []
    for path in paths:
        if not os.path.isdir(path):
            raise ValueError(f"{path} is not a directory")
        candidates = [path] if os.path.isfile(os.path.join(path, "config.yaml")) else sorted(
            os.path.join(path, d) for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "config.yaml")))
        for run in candidates:
            (finished if os.path.isfile(os.path.join(run, "final.json")) else unfinished).append(run)
    return finished, unfinished


def _group_key(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in _PER_RUN}, sort_keys=True, default=str)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (one run, no std)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summarize(runs: list[str]) -> list[str]:
    """One line per group of runs: model, data, seeds, residual and plain top-1 as mean ± std."""
    groups: dict[str, list[tuple[dict, dict, str]]] = defaultdict(list)
    for run in runs:
        cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(run, "config.yaml")))
        with open(os.path.join(run, "final.json")) as f:
            final = json.load(f)
        groups[_group_key(cfg)].append((cfg, final, run))
    lines = []
    for members in groups.values():
        cfg = members[0][0]
        seeds = sorted(c["seed"] for c, _, _ in members)
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"runs {', '.join(r for _, _, r in members)} repeat a seed ({seeds}): one run per seed")
        residual = _mean_std([f["residual"]["top1"] for _, f, _ in members])
        plain = _mean_std([f["plain"]["top1"] for _, f, _ in members])
        lines.append(f"{cfg['model']['name']} on {cfg['data']['name']}, seeds {', '.join(map(str, seeds))}: "
                     f"top-1 residual {residual}, plain {plain}  "
                     f"[{', '.join(os.path.basename(r) for _, _, r in members)}]")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run directories, or folders of run directories")
    args = p.parse_args(argv)
    try:
        finished, unfinished = find_runs(args.paths)
        if not finished:
            raise ValueError(f"no finished run (config.yaml and final.json) in {', '.join(args.paths)}")
        lines = summarize(finished)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if unfinished:
        print(f"skipped, no final.json yet: {', '.join(unfinished)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
