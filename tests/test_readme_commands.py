"""Every command in the bash blocks of the README and the guides (docs/*.md) runs as documented (with
small settings), prints no traceback, ends with status 0 or one `error:` line and status 2, and leaves
`git status` clean.

The commands run in this process (an entry point is `engine.cli.run_app`, a module is `runpy`) in a
copy of the repository's tracked files, so outputs land where a user's would. PLAN says how each
documented command runs; a command missing from PLAN fails the test, so the two stay together. The
commands run in the order a reader meets them (README, then the guides in mkdocs.yml's nav order).
"""
from __future__ import annotations

import contextlib
import glob
import importlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys

import torch
import yaml

from tests.helpers import randomize_bn, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["epochs=1", "data.train_size=256", "data.val_size=64", "progress=false"]
BENCH = ["batch_size=1", "warmup=0", "iters=1", "repeats=1", "memory=false", "stem=cifar",
         "model_kwargs.widths=[32,64,128,256]"]
PRUNE = ["model.kwargs.widths=[8,8,16]", "data.input_size=16", "data.train_size=64", "data.val_size=16",
         "batch_size=16", "epochs=1", "max_steps_per_epoch=2", "progress=false", "prune.calib_batches=1",
         "prune.finetune_epochs=1", "prune.bench.batch_size=2", "prune.bench.iters=1", "prune.bench.warmup=0",
         "prune.bench.repeats=1", "prune.bench.runtimes=[eager]"]
PRUNE_FILE = [a for a in PRUNE if not a.startswith("epochs=")]   # with prune.finetune=, epochs= is refused
RESREP = ["model.kwargs.widths=[8,8,16]", "data.input_size=16", "data.train_size=64", "data.val_size=16",
          "batch_size=16", "epochs=1", "max_steps_per_epoch=2", "progress=false", "resrep.epochs=1",
          "resrep.start_epochs=0", "resrep.interval=1", "resrep.calib_batches=1", "resrep.bench.batch_size=2",
          "resrep.bench.iters=1", "resrep.bench.warmup=0", "resrep.bench.repeats=1",
          "resrep.bench.runtimes=[eager]"]
# Documented command (without its comment) -> how it runs: ("run", extra arguments), ("error", regex of the
# one-line error it must end with (data this machine does not have), extra arguments), ("cfg",) (compose
# and print the config only: full-size or multi-GPU jobs), ("check",) (the command line is checked
# only: sweeps, which Hydra will not print), ("skip", why).
PLAN = {
    "bash scripts/quickstart.sh": ("skip", "set-up script: the train.py quickstart command below is its job"),
    "bash scripts/test.sh": ("skip", "this test suite itself"),
    "bash benchmarks/run_gpu_table1.sh": ("skip", "GPU only: it refuses on a machine without CUDA"),
    ".venv/bin/python -m models": ("run", []),
    ".venv/bin/python -m models 'rmnet*' --params": ("run", [], {"rmnet*": "rmnet26*"}),   # full sizes: minutes
    ".venv/bin/python train.py experiment=quickstart": ("run", [*QUICK, "run_name=qs"]),
    ".venv/bin/python train.py": ("cfg",),
    ".venv/bin/python train.py experiment=cifar10_rmnet26x3_32": ("error", r"cifar10 not found: .*cifar-10-batches-py"),
    ".venv/bin/python train.py experiment=cifar10_rmnet26x3_32 data=cifar100 model=resnet56":
        ("error", r"cifar100 not found"),
    ".venv/bin/torchrun --nproc_per_node=8 train.py experiment=imagenet_repvgg model=rmnet50x6_32": ("cfg",),
    ".venv/bin/torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 train.py ...": ("cfg",),
    ".venv/bin/python convert.py checkpoint=checkpoints/<run>/best.pt": ("run", []),
    ".venv/bin/python convert.py checkpoint=resnet50.pth model=resnet50 out=deploy/r50_plain.pt":
        ("run", ["model.kwargs.widths=[8,8,16,16]"]),
    ".venv/bin/python convert.py --help": ("run", []),
    ".venv/bin/python evaluate.py checkpoint=checkpoints/<run>/best.pt": ("run", ["progress=false"]),
    ".venv/bin/python evaluate.py checkpoint=checkpoints/<run>/deploy.pt": ("run", ["progress=false"]),
    ".venv/bin/python evaluate.py checkpoint=best.pt data=imagenet data.root=/data/imagenet":
        ("error", r"classifies 10 classes but data 'imagenet' has 1000"),
    ".venv/bin/python evaluate.py checkpoint=resnet50.pth model=resnet50 data=imagenet":
        ("error", r"imagenet split 'val' not found: data_cache/imagenet/val", ["model.kwargs.widths=[8,8,16,16]"]),
    ".venv/bin/torchrun --nproc_per_node=8 evaluate.py checkpoint=best.pt batch_size=128": ("cfg",),
    ".venv/bin/python evaluate.py --help": ("run", []),
    # The authors' released files are not here: each command names the missing file in one line
    # (tests/test_foreign_models.py loads files in their exact layouts).
    ".venv/bin/python evaluate.py checkpoint=rmrep_69.pth.tar model=rmrepvgg69 data=imagenet":
        ("error", r"checkpoint 'rmrep_69.pth.tar' does not exist"),
    ".venv/bin/python convert.py checkpoint=rmrep_69.pth.tar model=rmrepvgg69":
        ("error", r"checkpoint 'rmrep_69.pth.tar' does not exist"),
    ".venv/bin/python convert.py checkpoint=RepVGG-B1-deploy.pth model=repvgg_b1":
        ("error", r"checkpoint 'RepVGG-B1-deploy.pth' does not exist"),
    ".venv/bin/python benchmark.py checkpoints=[deploy/RepVGG-B1-deploy.pt]":
        ("error", r"checkpoint 'deploy/RepVGG-B1-deploy.pt' does not exist"),
    ".venv/bin/python benchmark.py models=[resnet50,rmnet50x6_32,repvgg_b2]": ("run", BENCH),
    ".venv/bin/python benchmark.py preset=table1_imagenet precision=bf16 channels_last=true": ("cfg",),
    # torch.compile takes about a minute to compile on this CPU; tests/test_runtimes.py checks it.
    ".venv/bin/python benchmark.py checkpoints=[checkpoints/<run>/best.pt] "
    "runtime=[eager,compile,onnxruntime,onnxruntime_int8] fidelity=true":
        ("run", BENCH[:5], {"runtime=[eager,compile,onnxruntime,onnxruntime_int8]": "runtime=[eager,onnxruntime_int8]"}),
    ".venv/bin/python benchmark.py models=[rmnet41x5_16] runtime=[onnxruntime,onnxruntime_int8] batch_size=1": ("cfg",),
    ".venv/bin/python -m bench.int8_layers checkpoints/<run>/best.pt": ("run", ["--keep-float", "0"]),
    ".venv/bin/python benchmark.py preset=a1_batch_sweep": ("cfg",),
    ".venv/bin/python benchmark.py checkpoints=[checkpoints/<run>/deploy.pt]": ("run", BENCH[:5]),
    ".venv/bin/python benchmark.py models=[rmnet26x3_32] stem=cifar export=[onnx,torchscript]":
        ("run", [*BENCH[:5], "export=[torchscript]"]),   # the ONNX exporter alone takes ~20 s (tests/test_benchmark.py)
    ".venv/bin/python prune.py": ("run", PRUNE),
    ".venv/bin/python prune.py data=cifar10 prune.sr=5e-4 prune.threshold=1e-3": ("error", r"cifar10 not found"),
    ".venv/bin/python prune.py prune.ratio=0.5": ("run", PRUNE),
    ".venv/bin/python prune.py prune.sparse_ckpt=RUN/sparse/best.pt prune.threshold=1e-3": ("run", PRUNE),
    ".venv/bin/python prune.py prune.eval=PATH": ("run", PRUNE),
    ".venv/bin/python prune.py prune.finetune=PATH": ("run", PRUNE_FILE),
    ".venv/bin/python prune.py -m experiment=figure6_mask_conv prune.sr=1e-4,5e-4,1e-3 prune.threshold=5e-4,1e-3,5e-3":
        ("check",),
    ".venv/bin/python prune.py -m experiment=figure6_bn_scale prune.sr=1e-4,5e-4,1e-3 prune.threshold=5e-4,1e-3,5e-3":
        ("check",),
    ".venv/bin/python -m pruning.figure checkpoints": ("run", []),
    ".venv/bin/python -m pruning.compare checkpoints": ("run", []),
    # AMC's search takes a minute even on a tiny model: its commands are composed here and run end to end
    # by tests/test_amc_pipeline.py.
    ".venv/bin/python amc.py": ("cfg",),
    ".venv/bin/python amc.py experiment=amc_cifar10_r0.5": ("error", r"cifar10 not found"),
    ".venv/bin/python amc.py amc.checkpoint=RUN/best.pt amc.flops_ratio=0.7": ("cfg",),
    ".venv/bin/python amc.py -m amc.flops_ratio=0.5,0.6,0.7,0.75": ("check",),
    ".venv/bin/python amc.py model=resnet20": ("cfg",),
    ".venv/bin/python amc.py model=rmnet26x3_32 amc.forms=[rm]": ("cfg",),
    ".venv/bin/python amc.py -m experiment=amc_cifar10_r0.5,amc_cifar10_r0.6,amc_cifar10_r0.7,amc_cifar10_r0.75":
        ("check",),
    ".venv/bin/python amc.py experiment=amc_imagenet_r0.5 data.root=/data/imagenet": ("cfg",),
    ".venv/bin/python amc.py -m experiment=amc_cifar10_ours amc.flops_ratio=0.5,0.6,0.7,0.75": ("check",),
    ".venv/bin/python -m bench.timm_coverage": ("skip", "the whole 207-name sweep, about 3 CPU minutes: "
                                                 "tests/test_timm_sweep.py runs it on a sample, and on all with -m slow"),
    ".venv/bin/python -m bench.timm_coverage --names regnetx_002 repvgg_a0 --out /tmp/coverage.md": ("run", []),
    ".venv/bin/python -m pytest -m slow tests/test_timm_sweep.py": ("skip", "a test of this suite"),
    ".venv/bin/python convert.py model=resnet152 out=r152_plain.pt": ("cfg",),
    ".venv/bin/python convert.py model=resnet152 out=r152_plain.pt verify_float64=true": ("cfg",),
    ".venv/bin/python convert.py model=resnet50 out=r50_plain.pt verify_float64=false": ("cfg",),
    ".venv/bin/python resrep.py": ("run", RESREP),
    ".venv/bin/python resrep.py resrep.base=RUN/best.pt resrep.target=0.6 resrep.forms=[rm]": ("run", RESREP),
    ".venv/bin/python train.py experiment=paper_cifar model=resnet56 data=cifar10 run_name=resnet56_cifar10":
        ("error", r"cifar10 not found"),
    ".venv/bin/python resrep.py experiment=resrep_resnet56_cifar10 resrep.base=checkpoints/resnet56_cifar10/best.pt":
        ("error", r"resrep.base=checkpoints/resnet56_cifar10/best.pt: no such file"),
    ".venv/bin/torchrun --nproc_per_node=8 resrep.py experiment=resrep_resnet50_imagenet "
    "resrep.base=resnet50-0676ba61.pth": ("cfg",),
    ".venv/bin/python -m scripts.paper_tables": ("run", ["--tables", "table3", "--no-progress"]),
    ".venv/bin/python train.py -m experiment=table2_mobilenetv1_cifar10 seed=0,1,2 "
    "'run_name=table2_mobilenetv1_cifar10_s${seed}'": ("check",),
    ".venv/bin/python -m paper.seeds checkpoints": ("run", []),   # the quickstart's run is there by then
    ".venv/bin/python -m scripts.paper_tables --tables table3 depth --json outputs/tables.json --markdown outputs/tables.md":
        ("run", ["--no-progress"]),
    ".venv/bin/python train.py experiment=paper_cifar model=resnet18 data=cifar10 run_name=a3_resnet18_cifar10_pretrain":
        ("error", r"cifar10 not found"),
    ".venv/bin/python convert.py checkpoint=checkpoints/a3_resnet18_cifar10_pretrain/best.pt conversion=keep_bn "
    "recalibrate.batches=200 out=checkpoints/a3_resnet18_cifar10_bn.pt":
        ("error", r"a3_resnet18_cifar10_pretrain/best.pt' does not exist"),
    ".venv/bin/python train.py experiment=a3_finetune_resnet18_cifar10":
        ("error", r"model.init=checkpoints/a3_resnet18_cifar10_bn.pt: no such file"),
    ".venv/bin/python train.py experiment=a3_finetune_resnet18_cifar10 run_name=a3_resnet18_cifar10_fused "
    "model.init=checkpoints/a3_resnet18_cifar10_pretrain/best.pt model.convert=fuse_bn":
        ("error", r"model.init=checkpoints/a3_resnet18_cifar10_pretrain/best.pt: no such file"),
}
ENTRY_POINTS = ("train", "evaluate", "benchmark", "convert", "prune", "amc", "resrep")


def _argv(command: str, subs: dict[str, str]) -> list[str]:
    """The arguments after the program (.venv/bin/python, or torchrun run as one process), placeholders
    replaced, with the plan's extra arguments."""
    how = PLAN[command]
    for key, value in subs.items():
        command = command.replace(key, value)
    torchrun = ("--nproc_per_node", "--nnodes", "--node_rank", "--master")   # torchrun's own options
    argv = [a for a in shlex.split(command)[1:] if a != "..." and not a.startswith(torchrun)]
    if how[0] == "cfg":
        return argv + ["--cfg", "job"]
    if how[0] == "check":
        return argv
    extra = how[1] if how[0] == "run" else (how[2] if len(how) > 2 else [])
    renamed = how[2] if how[0] == "run" and len(how) > 2 else {}
    return [renamed.get(a, a) for a in argv] + list(extra)


def _nav_pages(nav) -> list[str]:
    """The pages of mkdocs.yml's nav, in order ("Title: page.md" entries, sections of them, bare pages)."""
    pages = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def documented_files() -> list[str]:
    """README.md, then the guides (docs/*.md) in the site's order, then any guide the nav leaves out."""
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        nav = _nav_pages(yaml.safe_load(f).get("nav", []))
    guides = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    ordered = [p for p in nav if p in guides] + [p for p in guides if p not in nav]
    return [os.path.join(ROOT, "README.md"), *(os.path.join(ROOT, "docs", p) for p in ordered)]


def readme_commands() -> list[str]:
    """The commands of the bash blocks of the README and the guides, continuation lines joined, comments
    dropped."""
    commands = []
    for path in documented_files():
        with open(path) as f:
            text = f.read()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line:
                    commands.append(" ".join(line.split()))
    return commands


def test_the_guides_commands_are_covered_in_the_sites_order(tmp_path, monkeypatch):
    """Commands of a guide count as the README's do, guides in mkdocs.yml's nav order (a guide's commands
    may use the files an earlier one's wrote), then any guide the nav leaves out."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("```bash\nbash scripts/test.sh\n```\n")
    (tmp_path / "mkdocs.yml").write_text("nav:\n  - A: b.md\n  - Part:\n    - B: a.md\n")
    for name, command in (("a.md", "python a.py"), ("b.md", "python b.py  # b"), ("c.md", "python c.py")):
        (tmp_path / "docs" / name).write_text(f"text\n\n```bash\n{command}\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert readme_commands() == ["bash scripts/test.sh", "python b.py", "python a.py", "python c.py"]


def test_every_readme_command_has_a_plan():
    missing = [c for c in readme_commands() if c not in PLAN]
    assert not missing, f"README/guide commands without an entry in PLAN: {missing}"


def _run(argv: list[str]) -> tuple[int, str]:
    """Run one command in this process; (exit status, stderr)."""
    if argv[0] != "-m":
        code, _, err = run_script(argv[0][:-3], argv[1:])
        return code, err
    err = io.StringIO()
    saved = sys.argv
    sys.argv = [argv[1], *argv[2:]]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module(argv[1])
            if hasattr(module, "main"):   # pruning.figure, scripts.paper_tables, ...: they read sys.argv
                code = module.main() or 0
            else:   # python -m models runs models/__main__.py
                runpy.run_module(argv[1], run_name="__main__")
                code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    return code, err.getvalue()


def _scaffold(repo: str) -> dict[str, str]:
    """Files the README's commands name as placeholders, made in scaffold/ (kept out of git status) of the
    copy; returns the replacements that point the commands at them."""
    torch.manual_seed(0)
    import models

    os.makedirs(os.path.join(repo, "scaffold"))
    narrow = randomize_bn(models.create_model("resnet50", widths=[8, 8, 16, 16]))
    torch.save(narrow.state_dict(), os.path.join(repo, "scaffold", "resnet50.pth"))
    with open(os.path.join(repo, ".git", "info", "exclude"), "a") as f:
        f.write("/scaffold/\n")
    return {"<run>": "qs", "checkpoint=best.pt": "checkpoint=scaffold/best.pt",
            "checkpoint=resnet50.pth": "checkpoint=scaffold/resnet50.pth"}


def test_readme_commands_run_cleanly(tmp_path, monkeypatch, one_thread):
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.exists(os.path.join(ROOT, f)):
            os.makedirs(repo / os.path.dirname(f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), repo / f)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    subs = _scaffold(str(repo))
    failures = []
    for command in readme_commands():
        how = PLAN[command]
        if how[0] == "skip":
            continue
        argv = _argv(command, subs)
        assert argv[0] == "-m" or argv[0][:-3] in ENTRY_POINTS, command
        if how[0] == "check":
            from engine.config import prepare_argv

            prepare_argv(argv[1:], argv[0][:-3])
            continue
        code, err = _run(argv)
        if command.endswith("prune.py"):   # the later prune commands name this run's files
            root = repo / "checkpoints" / "prune-resnet20-synthetic-sr0.0001"
            subs["RUN"] = str(root)
            subs["PATH"] = str(root / "thr0.005" / "rm" / "pruned.pt")
            shutil.copy(subs["PATH"], repo / "checkpoints" / "pruned.pt")
            subs["PATH"] = str(repo / "checkpoints" / "pruned.pt")
        if command == ".venv/bin/python resrep.py":   # the next resrep command starts from its base run
            subs["RUN"] = str(repo / "checkpoints" / "resrep-resnet20-synthetic" / "base")
        if command.endswith("experiment=quickstart"):
            shutil.copy(repo / "checkpoints" / "qs" / "best.pt", repo / "scaffold" / "best.pt")
        lines = err.strip().splitlines()
        if "Traceback" in err:
            failures.append(f"{command}: printed a traceback\n{err[-2000:]}")
        elif how[0] == "error":
            if code != 2 or not lines or not re.search(how[1], lines[-1]) or not lines[-1].startswith("error: "):
                failures.append(f"{command}: expected one error line matching {how[1]!r}, got status {code}: {err}")
        elif code != 0:
            failures.append(f"{command}: exit status {code}: {err[-2000:]}")
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert not failures, "\n\n".join(failures)
    assert status == "", f"README commands left files in the checkout:\n{status}"
