"""RM + AMC as the RMNet authors ran it (issue 23 item 5): their MobileNetV2 (ReLU6), its approximate
conversion to MobileNetV1 (amc.relu6), the search settings of their recipe (top-5 reward, NNI's noise
decay and calibration batches), the per-epoch cosine of amc_train.py, the CIFAR-10 and ImageNet
recipes, and a tiny run of the reproduction recipe whose files evaluate.py reproduces."""
import glob
import json
import math
import os
import re

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import models
import rm
from engine.config import CONF_DIR, check_values
from engine.optim import lr_factor
from jobs import amc as pipeline
from models.complexity import count_macs, count_params
from models.mobilenet import InvertedResidual, relu6_as_relu
from tests.helpers import check_exact, randomize_bn, run_script


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on shared cores (conftest's one_thread)."""


def _compose(config, overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose(config, overrides=overrides)


def test_mobilenetv2_is_the_standard_network():
    """The authors' MobileNetV2 (their models/rmnet.py) is torchvision's layout: every tensor of the same
    shape in the same order, 3.50 M params and 300.8 M MACs at 224; the CIFAR stem has stride 1."""
    ours = models.create_model("mobilenetv2", num_classes=1000).eval()
    ref = torchvision.models.mobilenet_v2().eval()
    assert [tuple(t.shape) for t in ours.state_dict().values()] == [tuple(t.shape) for t in ref.state_dict().values()]
    assert count_params(ours) == count_params(ref) == 3_504_872
    assert count_macs(ours, 224) == count_macs(ref, 224) == 300_774_272
    assert sum(isinstance(m, torch.nn.ReLU6) for m in ours.modules()) == 19   # stem, 17 blocks, last conv
    cifar = models.create_model("mobilenetv2", num_classes=10, stem="cifar").eval()
    assert cifar.stem[0].stride == (1, 1) and count_macs(cifar, 32) == 24_461_312
    assert [b.use_shortcut for b in cifar if isinstance(b, InvertedResidual)].count(True) == 10


def test_the_exact_conversion_refuses_relu6_in_one_line():
    model = models.create_model("mobilenetv2", num_classes=10, stem="cifar").eval()
    with pytest.raises(rm.ConversionError, match=r"MobileNetV2 of type models\.mobilenet\.MobileNetV2: its blocks use "
                                                 r"ReLU6.*amc\.relu6=approximate") as e:
        rm.convert(model)
    assert "\n" not in str(e.value)
    with pytest.raises(rm.ConversionError, match="InvertedResidual: its blocks use ReLU6"):
        rm.convert(torch.nn.Sequential(model.block3).eval())   # the block alone, outside the model's own check


def test_relu6_as_relu_converts_exactly_and_the_difference_is_measurable():
    """The ReLU copy converts exactly; against the ReLU6 model the difference is what the clamp cut off:
    nothing while pre-activations stay under 6, large when BN scales push them above."""
    model = randomize_bn(models.create_model("mobilenetv2", num_classes=10, stem="cifar", width_mult=0.25), seed=1)
    relu = relu6_as_relu(model)
    assert not any(isinstance(m, torch.nn.ReLU6) for m in relu.modules())
    assert any(isinstance(m, torch.nn.ReLU6) for m in model.modules())   # the original is untouched
    check_exact(relu, 32)
    big = randomize_bn(models.create_model("mobilenetv2", num_classes=10, stem="cifar", width_mult=0.25), seed=1,
                       gamma_scale=4.0)
    error = rm.verify(big, rm.convert(relu6_as_relu(big)), 32)["float64"]["max_rel"]
    assert 1e-3 < error < math.inf


def test_per_epoch_cosine_holds_each_epoch_at_its_first_steps_rate():
    """amc_train.py: lr = 0.5 lr (1 + cos(pi epoch / epochs)), set once per epoch; the default moves every step."""
    per_epoch = OmegaConf.create({"name": "cosine", "warmup_epochs": 0, "min_lr_ratio": 0.0, "per_epoch": True})
    factors = [lr_factor(per_epoch, step, 4, 5) for step in range(20)]
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * (step // 4) / 5)) for step in range(20)], abs=1e-15)
    per_step = [lr_factor(OmegaConf.merge(per_epoch, {"per_epoch": False}), step, 4, 5) for step in range(20)]
    assert per_step[1] < per_step[0] and per_step[4] == factors[4]


def _recipes():
    names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONF_DIR, "experiment", "amc_*.yaml")))
    expected = {n: ("mobilenetv2_rm" if "ours" in n else "mobilenetv2", "imagenet" if "imagenet" in n else "cifar10")
                for n in names}
    return sorted(expected.items())


@pytest.mark.parametrize("recipe, expected", _recipes())
def test_every_amc_recipe_composes_to_its_own_model_and_data_with_the_authors_search(recipe, expected):
    """In amc.py and train.py alike; the search settings are the authors' (top-5, NNI's 0.99 and 60
    batches of 50), and they reach the agent."""
    cfg = _compose("amc", [f"experiment={recipe}"])
    check_values(cfg)
    pipeline.check_settings(cfg)
    assert (cfg.model.name, cfg.data.name) == expected
    tcfg = _compose("train", [f"experiment={recipe}"])
    assert (tcfg.model.name, tcfg.data.name) == expected
    a = cfg.amc
    assert (a.reward_metric, a.agent.noise_decay, a.feature_batches, a.search_batch_size) == ("top5", 0.99, 60, 50)
    assert a.relu6 == ("exact" if expected[0] == "mobilenetv2_rm" else "approximate")
    assert (cfg.sched.name, cfg.sched.per_epoch, cfg.optim.decay_norm_and_bias) == ("cosine", True, True)
    assert a.holdout == (3000 if expected[1] == "imagenet" else 5000)
    assert pipeline.search_settings(a, 17, 0).agent.noise_decay == 0.99


def test_the_search_loaders_take_the_recipes_batches():
    cfg = _compose("amc", ["experiment=amc_cifar10_r0.5", "data=synthetic", "data.train_size=3200",
                           "amc.holdout=100", "workers=0"])
    features, holdout = pipeline.search_loaders(cfg)
    assert features.batch_size == holdout.batch_size == 50 and len(features) == 60


TINY = ["+model.kwargs.width_mult=0.25", "data=synthetic", "data.input_size=32", "data.train_size=160",
        "data.val_size=32", "batch_size=16", "global_batch_size=null", "epochs=1", "max_steps_per_epoch=2",
        "workers=0", "progress=false", "amc.holdout=32", "amc.feature_batches=2", "amc.search_batch_size=16",
        "amc.calib_batches=1", "amc.episodes=3", "amc.warmup=2", "amc.channel_round=1", "amc.rm_finetune_epochs=1",
        "amc.finetune_epochs=1", "amc.agent.hidden=16", "amc.agent.batch_size=4", "amc.bench.batch_size=2",
        "amc.bench.iters=1", "amc.bench.warmup=0", "amc.bench.repeats=1", "amc.bench.runtimes=[eager]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """amc.py experiment=amc_cifar10_r0.5 on tiny synthetic data, from the command line, in process;
    every held-out score the search asks for is recorded."""
    out = tmp_path_factory.mktemp("rm_amc")
    scores = []
    real = pipeline.evaluate

    def recording(*args, **kwargs):
        scores.append(real(*args, **kwargs))
        return scores[-1]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "evaluate", recording)
        code, _, err = run_script("amc", ["experiment=amc_cifar10_r0.5", f"output_dir={out}", *TINY])
    torch.set_num_threads(threads)
    assert code == 0, err
    root = os.path.join(out, "amc-mobilenetv2-synthetic", "r0.5-own")   # the authors' budget: each form's own MACs
    with open(os.path.join(root, "report.json")) as f:
        return root, json.load(f), scores, err


def test_the_reproduction_recipe_runs_and_reports_the_approximation(tiny_run):
    root, report, _, err = tiny_run
    assert (report["model"], report["search"]["reward_metric"]) == ("mobilenetv2", "top5")
    conversion = report["methods"]["rm"]["conversion"]
    assert conversion["relu6"] == "approximate" and 0 <= conversion["max_rel"] < math.inf
    assert conversion["top1_relu6"] == report["reference"]["top1"] and 0 <= conversion["top1_converted"] <= 100
    assert report["methods"]["residual"]["conversion"] is None
    rm_row, residual_row = report["rows"]   # half of each form's own MACs: MobileNetV1 costs more than MobileNetV2
    assert rm_row["target"] > 2 * residual_row["target"] == report["reference"]["macs"]
    md = open(os.path.join(root, "report.md")).read()
    assert "Converted with ReLU in place of ReLU6 (amc.relu6=approximate)" in md and "top5 accuracy" in md


def test_the_search_is_rewarded_by_held_out_top5(tiny_run):
    """Each episode's accuracy (and so its reward) is the held-out top-5 of its pruned model."""
    root, report, scores, _ = tiny_run
    histories = []
    for form in ("rm", "residual"):
        search = torch.load(os.path.join(root, form, "search.pt"), weights_only=True)
        histories += [h["accuracy"] for h in search["history"]]
        assert report["methods"][form]["policy"]["reward_metric"] == "top5"
    assert histories == [s["top5"] for s in scores] and any(s["top5"] != s["top1"] for s in scores)


def test_evaluate_and_benchmark_defaults_read_the_files(tiny_run, tmp_path):
    """evaluate.py with its defaults reproduces every reported top-1; for the ReLU6 residual files it and
    benchmark.py leave the plain form out with a note (no exact RM form) and measure the rest."""
    root, report, _, _ = tiny_run
    for row in report["rows"]:
        form = "plain" if row["form"] == "rm" else "residual"
        for name, key in (("pruned.pt", "top1_pruned"), ("finetuned.pt", "top1_finetuned")):
            out = tmp_path / f"{row['form']}-{name}.json"
            code, stdout, err = run_script("evaluate", [f"checkpoint={os.path.join(root, row['form'], name)}",
                                                        "workers=0", "progress=false", f"out={out}"])
            assert code == 0, err
            results = json.loads(out.read_text())["results"]
            assert list(results) == [form] and results[form]["top1"] == pytest.approx(row[key])
            assert ("note: plain form left out: the model has ReLU6" in stdout) == (form == "residual")
    code, _, err = run_script("benchmark", [f"checkpoints=[{os.path.join(root, 'residual', 'finetuned.pt')}]",
                                            "batch_size=[2]", "warmup=0", "iters=1", "repeats=1", f"out_dir={tmp_path}"])
    assert code == 0 and "plain form left out" in err, err


def test_train_py_refuses_a_relu6_model_it_could_not_convert_before_training(tmp_path):
    """train.py's final step converts exactly: with it on, a ReLU6 model is refused before any epoch."""
    code, _, err = run_script("train", ["model=mobilenetv2", "+model.kwargs.width_mult=0.25", "data=synthetic",
                                        "data.input_size=32", "epochs=1", "workers=0", "progress=false",
                                        f"output_dir={tmp_path}"])
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"error: mobilenetv2 has ReLU6: .*final\.enabled=false", err), err
    assert os.listdir(tmp_path) == []
    code, _, err = run_script("train", ["model=mobilenetv2", "+model.kwargs.width_mult=0.25", "data=synthetic",
                                        "data.input_size=32", "data.train_size=32", "data.val_size=16", "batch_size=16",
                                        "epochs=1", "workers=0", "progress=false", "final.enabled=false",
                                        f"output_dir={tmp_path}"])
    assert code == 0, err
