"""Every producer's files reproduce its numbers (issue 20 §2): train.py, convert.py, prune.py, amc.py and
resrep.py run at smoke size, then evaluate.py and benchmark.py run with their defaults on each file the
producer wrote, and evaluate.py's top-1 is the one the producer reported (same validation set)."""
import glob
import json
import os

import pytest

from tests.helpers import run_script

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = ["data=synthetic", "data.input_size=16", "data.train_size=64", "data.val_size=24", "batch_size=16",
         "epochs=1", "max_steps_per_epoch=2", "workers=0", "progress=false"]
BENCH = [f"{section}.bench.{key}={value}" for section in ("prune", "amc", "resrep")
         for key, value in (("batch_size", 2), ("iters", 1), ("warmup", 0), ("repeats", 1),
                                             ("runtimes", "[eager]"))]
TINY_RESNET = ["model=resnet20", "model.kwargs.widths=[4,8,8]"]


def _run(script, argv):
    code, out, err = run_script(script, argv)
    assert code == 0, err[-2000:]


def _json(pattern):
    [path] = glob.glob(pattern, recursive=True)
    with open(path) as f:
        return json.load(f)


def train(tmp):
    _run("train", [*SMOKE, *TINY_RESNET, f"output_dir={tmp}", "run_name=run"])
    final = _json(f"{tmp}/run/final.json")
    return [(final["checkpoint"], final["residual"]["top1"]), (final["deploy"], final["plain"]["top1"])]


def convert(tmp):
    produced = train(tmp)
    out = f"{tmp}/converted.pt"
    _run("convert", [f"checkpoint={produced[0][0]}", f"out={out}", "progress=false"])
    return [(out, produced[1][1])]   # the plain form train.py evaluated


def prune(tmp):
    _run("prune", [*SMOKE, *TINY_RESNET, *[a for a in BENCH if a.startswith("prune")], f"output_dir={tmp}",
                   "prune.calib_batches=1", "prune.finetune_epochs=1", "prune.sr=1e-3", "prune.ratio=0.3"])
    report = _json(f"{tmp}/**/report.json")
    produced = [(report["sparse_checkpoint"], report["reference"]["top1"])]
    for family in report["forms"].values():
        produced += [(family["artifact"], family["top1_pruned"]),
                     (os.path.join(os.path.dirname(family["artifact"]), "finetuned.pt"), family["top1_finetuned"])]
    return produced


def amc(tmp):
    _run("amc", [*SMOKE, "model.kwargs.width_mult=0.25", *[a for a in BENCH if a.startswith("amc")],
                 f"output_dir={tmp}", "amc.holdout=16", "amc.feature_batches=1", "amc.calib_batches=1",
                 "amc.episodes=2", "amc.warmup=1", "amc.channel_round=1", "amc.finetune_epochs=1",
                 "amc.agent.hidden=8", "amc.agent.batch_size=2"])
    report = _json(f"{tmp}/**/report.json")
    produced = [(report["checkpoint"], report["reference"]["top1"])]
    for row, method in zip(report["rows"], report["methods"].values()):
        produced += [(method["pruned_artifact"], row["top1_pruned"]), (row["artifact"], row["top1_finetuned"])]
    return produced


def resrep(tmp):
    _run("resrep", [*SMOKE, *TINY_RESNET, *[a for a in BENCH if a.startswith("resrep")], f"output_dir={tmp}",
                    "resrep.epochs=1", "resrep.start_epochs=0", "resrep.interval=1", "resrep.calib_batches=1",
                    "resrep.lr=0.05", "optim.lr_batch=null", "resrep.granularity=1000", "resrep.lasso=5.0",
                    "resrep.compactor_momentum=0", "resrep.threshold=0.2", "resrep.target=0.3"])
    report = _json(f"{tmp}/**/report.json")
    return [(report["base"], report["reference"]["top1"])] + [
        (form["artifact"], form["top1_pruned"]) for form in report["forms"].values()]


@pytest.mark.parametrize("producer", [train, convert, prune, amc, resrep], ids=lambda f: f.__name__)
def test_evaluate_and_benchmark_reproduce_every_file_a_producer_writes(producer, tmp_path):
    produced = producer(tmp_path)
    assert produced and len({path for path, _ in produced}) == len(produced)
    for path, top1 in produced:
        evaluated = f"{tmp_path}/eval.json"
        _run("evaluate", [f"checkpoint={path}", f"out={evaluated}", "progress=false"])
        with open(evaluated) as f:
            report = json.load(f)
        form = "residual" if "residual" in report["results"] else "plain"
        one_image = 100 / report["data"]["val_size"]   # an argmax tie may flip between batch sizes
        assert report["data"]["val_size"] == 24 and report["data"]["input_size"] == 16, path
        assert abs(report["results"][form]["top1"] - top1) < one_image, path
        _run("benchmark", [f"checkpoints=[{path}]", f"out_dir={tmp_path}/bench"])
