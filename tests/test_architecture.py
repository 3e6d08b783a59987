"""The dependency rules of docs/ARCHITECTURE.md: `rm` needs torch alone (a deploy artifact loads with
only the rm/ folder and torch), packages import each other one way, no package cycle exists, and no
module imports a job (what an entry point runs) to borrow a helper."""
import ast
import os
import shutil
import subprocess
import sys

import torch

from jobs.train import run as run_training
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("rm", "models", "artifacts", "data", "engine", "bench", "pruning", "paper", "jobs")
# Which project packages each package may import (the graph in docs/ARCHITECTURE.md).
ALLOWED = {
    "rm": set(),
    "models": {"rm"},
    "artifacts": {"models", "rm"},
    "data": set(),
    "engine": {"artifacts", "models", "rm", "data"},
    "bench": {"artifacts", "models", "rm", "engine"},
    "pruning": {"artifacts", "models", "rm", "data", "engine", "bench"},
    "paper": {"models", "rm"},
    "jobs": {"artifacts", "models", "rm", "data", "engine", "bench", "pruning"},
}
# The jobs: each entry point's work. Only the entry points (and tests) import them; a helper two jobs share
# lives in a module of its own (bench.timing, bench.forms, engine.environment, engine.inputs, ...).
JOBS = tuple(f"jobs.{name[:-3]}" for name in sorted(os.listdir(os.path.join(ROOT, "jobs")))
             if name.endswith(".py") and name != "__init__.py")
BLOCKED = ("models", "engine", "data", "pruning", "artifacts", "bench", "paper", "jobs", "hydra", "omegaconf", "timm",
           "torchvision", "tqdm")


def _imports(package: str) -> dict[str, set[str]]:
    """module path -> top-level names it imports (at module level or inside functions)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            tree = ast.parse(open(path).read(), path)
            names = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names.add(node.module.split(".")[0])
            found[os.path.relpath(path, ROOT)] = names
    return found


def _modules_imported(path: str) -> set[str]:
    """Dotted names of the modules (and imported attributes) a file imports, relative imports resolved."""
    here = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__").split(".")
    package = here if path.endswith("__init__.py") else here[:-1]
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] if node.level else [])
            module = ".".join(p for p in (base, node.module or "") if p)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    return {pkg: {n for names in _imports(pkg).values() for n in names if n in PACKAGES and n != pkg}
            for pkg in PACKAGES}


def test_rm_imports_torch_and_the_standard_library_only():
    allowed = {"torch", "__future__"} | set(sys.stdlib_module_names)
    for module, names in _imports("rm").items():
        assert names <= allowed, f"{module} imports {sorted(names - allowed)}"


def test_packages_import_each_other_one_way():
    graph = _graph()
    for pkg, deps in graph.items():
        assert deps <= ALLOWED[pkg], f"{pkg} imports {sorted(deps - ALLOWED[pkg])}, not in docs/ARCHITECTURE.md"
    # No cycle: repeatedly remove packages that import no remaining package.
    left = dict(graph)
    while left:
        leaves = [p for p, deps in left.items() if not deps & left.keys()]
        assert leaves, f"import cycle among {sorted(left)}"
        for p in leaves:
            del left[p]


def test_no_module_imports_a_job():
    """A job is imported by its entry point alone: pruning/report.py once imported the benchmark job for
    its BN folding and timer."""
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                own = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                borrowed = {job for job in JOBS for m in _modules_imported(path) if job != own and
                            (m == job or m.startswith(job + "."))}
                assert not borrowed, f"{os.path.relpath(path, ROOT)} imports the job(s) {sorted(borrowed)}"


def test_a_trainer_deploy_artifact_runs_with_rm_alone(tmp_path):
    """Only rm/ copied into an empty folder; the project's other packages, Hydra, OmegaConf, timm,
    torchvision and tqdm unimportable: the deploy.pt a training run wrote still loads and computes the
    outputs of the plain model."""
    summary = run_training(tiny_config(tmp_path / "runs", "run_name=r", "epochs=1", "max_steps_per_epoch=2"))
    deploy = summary["deploy"]
    import artifacts

    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = artifacts.load(deploy).model(x)
    alone = tmp_path / "alone"
    shutil.copytree(os.path.join(ROOT, "rm"), alone / "rm", ignore=shutil.ignore_patterns("__pycache__"))
    torch.save(x, tmp_path / "x.pt")
    code = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None   # any import of these now fails
import torch, rm
assert rm.__file__.startswith({str(alone)!r}), rm.__file__
net, meta = rm.load_deploy({deploy!r})
with torch.no_grad():
    torch.save(net(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
print(meta["model_spec"]["name"])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=alone, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "resnet18"
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected)   # another process: float32 tolerance
