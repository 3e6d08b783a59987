"""Bad input is refused clearly: every checkpoint loader on corrupt, truncated, foreign and unsafe
files; CLIs with one line and a non-zero exit; undecodable images; converter preconditions."""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
import sys
import zipfile

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

import artifacts
import models
import rm
from artifacts import CheckpointError, extract_state_dict
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import CONF_DIR, ConfigError, check_values, per_process_batch
from engine.errors import exit_on_user_error
from engine.settings import TrainSettings
from engine.stages import build
from rm import ConversionError, DeployFormatError, load_file
from tests.helpers import run_script, tiny_config, trainer_for

WIDTHS = [8, 8, 16, 16]
REFUSED = (CheckpointError, DeployFormatError)
MARKER = "rmnet-pickle-executed"


def tiny(num_classes=10, stem="cifar", name="resnet18"):
    kwargs = {"widths": WIDTHS} if name == "resnet18" else {}
    return models.create_model(name, num_classes=num_classes, stem=stem, **kwargs).eval()


class _Exploit:
    """Pickles to a call of os.system: loading it must not run the command."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """name -> path of files no loader may accept."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "good.pt"
    torch.save({"format": "rmnet-train", "version": 1, "model": tiny().state_dict()}, good)
    data = good.read_bytes()
    rng = random.Random(0)
    files = {"empty": b"", "random": bytes(rng.randrange(256) for _ in range(4096)),
             "text": b"model weights\n", "text_h": b"hello\n", "text_j": b"jello\n"}
    for frac in (0.05, 0.5, 0.95):
        files[f"truncated{int(frac * 100)}"] = data[: int(len(data) * frac)]
    flipped = bytearray(data)
    for i in rng.sample(range(64, len(data)), 64):
        flipped[i] ^= 0xFF
    files["bitflips"] = bytes(flipped)
    files["plain_pickle"] = pickle.dumps({"conv.weight": [1.0, 2.0]})
    paths = {name: d / f"{name}.pt" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    with zipfile.ZipFile(d / "zip.pt", "w") as z:
        z.writestr("notes/readme.txt", "not a checkpoint")
    paths["zip"] = d / "zip.pt"
    paths["unsafe"] = d / "unsafe.pt"
    torch.save({"model": _Exploit(d / MARKER)}, paths["unsafe"])
    paths["tensor"] = d / "tensor.pt"
    torch.save(torch.ones(3), paths["tensor"])
    paths["strings"] = d / "strings.pt"
    torch.save({"model": {"conv.weight": "not a tensor"}}, paths["strings"])
    paths["deploy_format_only"] = d / "deploy_format_only.pt"
    torch.save({"format": "rmnet-deploy", "version": 1}, paths["deploy_format_only"])
    return {name: str(p) for name, p in paths.items()}


def _cli(monkeypatch, capsys, config: str, argv: list[str]) -> str:
    """Run an entry point in this process as its command line would; its one-line error is raised as a
    CheckpointError, so that callers treat it like the library loaders."""
    code, _, err = run_script(config, argv)
    err = err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, (config, code, err)
    raise CheckpointError(err)


def _loaders(tmp_path, monkeypatch, capsys):
    """Every way this project reads a weights file, as name -> fn(path)."""
    model = ["model=resnet18", f"model.kwargs.widths=[{','.join(map(str, WIDTHS))}]"]
    return {
        "rm.load_file + extract_state_dict": lambda p: extract_state_dict(rm.load_file(p), p),
        "load_checkpoint (resume)": lambda p: load_checkpoint(p),
        "rm.load_deploy": lambda p: rm.load_deploy(p),
        "artifacts.load": lambda p: artifacts.load(p, name="resnet18", kwargs={"widths": WIDTHS}),
        "evaluate.py": lambda p: _cli(monkeypatch, capsys, "evaluate", [f"checkpoint={p}", *model, "data=synthetic"]),
        "convert.py": lambda p: _cli(monkeypatch, capsys, "convert", [f"checkpoint={p}", *model,
                                                                     f"out={tmp_path / 'out.pt'}"]),
        "train.py model.init": lambda p: _cli(monkeypatch, capsys, "train", [f"model.init={p}", *model,
                                                                            f"output_dir={tmp_path}"]),
    }


def _more_tools(tmp_path, monkeypatch, capsys):
    """The other entry points that read a file the user names (one Hydra composition each: run on a few kinds)."""
    return {
        "benchmark.py": lambda p: _cli(monkeypatch, capsys, "benchmark", [f"checkpoints=[{p}]", f"out_dir={tmp_path}"]),
        "amc.py amc.checkpoint": lambda p: _cli(monkeypatch, capsys, "amc", [f"amc.checkpoint={p}",
                                                                            f"output_dir={tmp_path}"]),
    }


@pytest.mark.parametrize("kind", ["empty", "random", "text", "text_h", "text_j", "truncated5", "truncated50",
                                  "truncated95", "bitflips", "plain_pickle", "zip", "unsafe", "tensor", "strings",
                                  "deploy_format_only"])
def test_every_loader_refuses_bad_files(bad_files, kind, tmp_path, monkeypatch, capsys):
    _refused_by(_loaders(tmp_path, monkeypatch, capsys), bad_files[kind], kind, tmp_path)


@pytest.mark.parametrize("kind", ["text_h", "text_j", "random", "zip"])
def test_every_tool_refuses_bad_files(bad_files, kind, tmp_path, monkeypatch, capsys):
    _refused_by(_more_tools(tmp_path, monkeypatch, capsys), bad_files[kind], kind, tmp_path)


def _refused_by(loaders, path, kind, tmp_path):
    for loader, load in loaders.items():
        with pytest.raises(REFUSED) as e:
            load(path)
        assert "\n" not in str(e.value), (loader, kind)
        assert path in str(e.value), (loader, kind, str(e.value))
    assert not os.path.exists(os.path.join(os.path.dirname(path), MARKER)), "an unsafe pickle was executed"
    assert not os.listdir(tmp_path), "a refused file left outputs behind"


def test_unsafe_pickle_names_the_object_and_the_fix(bad_files):
    with pytest.raises(CheckpointError, match=r"system.*weights_only=True.*state_dict"):
        load_file(bad_files["unsafe"])


def test_truncated_file_says_so(bad_files):
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_file(bad_files["truncated50"])


def test_text_file_says_it_is_not_a_checkpoint(bad_files):
    """A text file starting with "h" or "j" made the weights-only unpickler raise KeyError (exit 1)."""
    with pytest.raises(CheckpointError, match=r"text_h.pt is not a PyTorch checkpoint: it starts with b'hello"):
        load_file(bad_files["text_h"])


def test_corrupt_bytes_of_any_kind_are_a_checkpoint_error(tmp_path):
    """Torch's loaders raise many exception types on damaged input (KeyError, IndexError, struct.error,
    AssertionError, UnicodeDecodeError, ...): every one is a CheckpointError naming the file."""
    rng = random.Random(1)
    sources = []
    for legacy in (False, True):
        path = tmp_path / "good.pt"
        torch.save({"a": torch.ones(3), "b": [1, 2]}, path, _use_new_zipfile_serialization=not legacy)
        sources.append(path.read_bytes())
    samples = [bytes([c]) + b"ello\n" for c in range(256)]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(100)]
    for data in sources:
        for _ in range(100):
            damaged = bytearray(data)
            for _ in range(3):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            samples += [bytes(damaged), data[:rng.randrange(len(data))]]
    path = str(tmp_path / "bad.pt")
    for data in samples:
        with open(path, "wb") as f:
            f.write(data)
        try:
            load_file(path)
        except CheckpointError as e:
            assert path in str(e) and "\n" not in str(e), str(e)


@pytest.mark.parametrize("other", [dict(num_classes=100), dict(stem="imagenet"), dict(name="resnet20")],
                         ids=["classes", "stem", "architecture"])
def test_foreign_checkpoints_are_refused_with_the_mismatch(tmp_path, other, monkeypatch, capsys):
    """A state dict of another model, class count or stem than the one asked for: the loaders name the
    mismatching keys and shapes (the first kind of problem at least)."""
    bare = str(tmp_path / "bare.pt")
    torch.save(tiny(**other).state_dict(), bare)
    wanted = ["model=resnet18", f"model.kwargs.widths=[{','.join(map(str, WIDTHS))}]"]
    loads = [lambda: artifacts.load(bare, name="resnet18", num_classes=10, stem="cifar", kwargs={"widths": WIDTHS}),
             lambda: build(TrainSettings.from_cfg(tiny_config(tmp_path, f"model.init={bare}"))),
             lambda: _cli(monkeypatch, capsys, "convert", [f"checkpoint={bare}", *wanted, "num_classes=10",
                                                          "stem=cifar", f"out={tmp_path / 'o.pt'}"])]
    for load in loads:
        with pytest.raises(CheckpointError, match=r"does not fit resnet18.*(fc.weight|conv1.weight|layer)"):
            load()
    plain = rm.convert(tiny())
    # a deploy artifact whose weights do not fit its own layer list
    deploy = str(tmp_path / "deploy.pt")
    rm.save_deploy(plain, deploy)
    blob = torch.load(deploy, weights_only=True)
    blob["state_dict"] = rm.convert(tiny(**other)).state_dict()
    torch.save(blob, deploy)
    with pytest.raises(DeployFormatError, match="damaged plain model"):
        rm.load_deploy(deploy)


@pytest.mark.parametrize("key", ["model_cfg", "model_spec"], ids=["version1", "version2"])
def test_training_checkpoint_of_an_unknown_model(tmp_path, key):
    path = str(tmp_path / "old.pt")
    settings = {"name": "resnet19", "num_classes": 10, "stem": "cifar"}
    save_checkpoint(path, model=tiny().state_dict(),
                    **{key: settings if key == "model_cfg" else models.ModelSpec(**settings).to_dict()})
    with pytest.raises(CheckpointError, match="resnet19.*Did you mean"):
        artifacts.load(path)


def test_cli_wrapper_prints_one_line_and_exits_2(capsys):
    @exit_on_user_error
    def cli():
        models.create_model("resnt50")

    with pytest.raises(SystemExit) as e:
        cli()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'resnt50'" in err and "resnet50" in err

    @exit_on_user_error
    def bug():
        raise RuntimeError("a bug keeps its traceback")

    with pytest.raises(RuntimeError):
        bug()


@pytest.mark.parametrize("config, argv, message", [
    ("train", ["model=rmnet50x6"], r"unknown model 'rmnet50x6'. Did you mean: rmnet50x6_32"),
    ("train", ["data=cifar11"], r"unknown data 'cifar11'. Did you mean: cifar10, cifar100"),
    ("train", ["optim=adamx"], r"unknown optim 'adamx'. Did you mean: adamw"),
    ("evaluate", ["checkpoint=x.pt", "model=nope"], r"unknown model 'nope'"),
    ("evaluate", ["checkpoint=x.pt", "data.input_sise=16"], r"unknown key 'data.input_sise'. Did you mean 'data.input_size'"),
    ("benchmark", ["models=[resnet18]", "precison=bf16"], r"unknown key 'precison'. Did you mean 'precision'"),
    ("benchmark", ["models=[resnet18]", "+precison=bf16"], r"'\+precison=bf16': new keys can only be added under"),
    ("prune", ["model=resnt20"], r"unknown model 'resnt20'. Did you mean: resnet20"),
])
def test_entry_points_refuse_bad_overrides_in_one_line(monkeypatch, capsys, config, argv, message):
    from engine.cli import run_app

    monkeypatch.setattr(sys, "argv", [f"{config}.py", *argv])
    with pytest.raises(SystemExit) as e:
        run_app(config, lambda cfg: pytest.fail("the job ran"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err


# --- batch sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["global_batch_size=256"], r"set one of batch_size .* and global_batch_size .*got batch_size=16 and "
                                r"global_batch_size=256; e.g. batch_size=64 global_batch_size=null"),
    (["batch_size=null"], r"got batch_size=null and global_batch_size=null"),
    (["batch_size=0"], r"batch_size must be null or a positive integer, got 0"),
    (["batch_size=null", "global_batch_size=2.5"], r"global_batch_size must be null or a positive integer"),
])
def test_batch_settings_are_checked_before_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_values(tiny_config(tmp_path, *overrides))


def test_global_batch_must_split_evenly_over_the_processes(tmp_path):
    cfg = tiny_config(tmp_path, "batch_size=null", "global_batch_size=256")
    assert [per_process_batch(cfg, world) for world in (1, 2, 8)] == [256, 128, 32]
    with pytest.raises(ConfigError, match=r"global_batch_size=256 does not split evenly over 3 processes; use a "
                                          r"multiple of 3 \(255, 258\), or a process count that divides 256"):
        per_process_batch(cfg, 3)


def test_a_batch_larger_than_the_training_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"the batch of 512 per process exceeds the 256 training samples per "
                                          r"process; lower global_batch_size"):
        cfg = tiny_config(tmp_path, "batch_size=null", "global_batch_size=512")
        trainer_for(cfg)
    assert not os.listdir(tmp_path)   # refused before a run folder is made


# --- datasets -------------------------------------------------------------------------------------
def _image_folder(root, bad):
    from PIL import Image

    for c in ("a", "b"):
        os.makedirs(root / "val" / c)
        for i in range(2):
            Image.new("RGB", (20, 20), (100 * i, 50, 0)).save(root / "val" / c / f"{i}.JPEG")
    (root / "val" / "b" / "bad.JPEG").write_bytes(bad)
    return str(root / "val" / "b" / "bad.JPEG")


@pytest.mark.parametrize("bad", [b"not an image", b"\xff\xd8\xff\xe0" + b"\0" * 20], ids=["garbage", "truncated"])
def test_undecodable_image_fails_or_is_skipped_and_named(tmp_path, caplog, bad):
    import data

    bad_path = _image_folder(tmp_path, bad)
    cfg = OmegaConf.create({"name": "imagenet", "root": str(tmp_path), "num_classes": 2, "bad_images": "fail"})
    ds = data.build_dataset(cfg, "val")
    index = [p for p, _ in ds.samples].index(bad_path)
    with pytest.raises(data.DatasetError, match=r"bad\.JPEG cannot be decoded.*bad_images=skip"):
        ds[index]
    cfg.bad_images = "skip"
    ds = data.build_dataset(cfg, "val")
    with caplog.at_level(logging.WARNING, logger="rmnet.data"):
        samples = [ds[i] for i in range(len(ds))]
    assert len(samples) == 5 and ds.skipped == 1 and bad_path in caplog.text
    cfg.bad_images = "ignore"
    with pytest.raises(ValueError, match="bad_images must be one of"):
        data.build_dataset(cfg, "val")


# --- converter preconditions ----------------------------------------------------------------------
def test_convert_names_what_breaks_its_preconditions():
    model = tiny()
    model.layer2[0].bn1.train()
    with pytest.raises(ConversionError, match=r"training mode \(layer2\.0\.bn1\)"):
        rm.convert(model)
    model = tiny()
    model.layer1[1].bn2.running_var[3] = -1.0
    with pytest.raises(ConversionError, match=r"negative .*layer1\.1\.bn2"):
        rm.convert(model)
    model = tiny()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ConversionError, match=r"NaN/Inf.*fc\.weight"):
        rm.convert(model)
    model = tiny()
    model.layer1[0].bn1 = nn.BatchNorm2d(8, track_running_stats=False).eval()
    with pytest.raises(ConversionError, match=r"running statistics.*layer1\.0\.bn1"):
        rm.convert(model)

    class Unknown(nn.Module):
        def forward(self, x):
            return x * 2   # no converter and no plain form (an identity forward now converts, by the graph pass)

    model = tiny()
    model.layer1 = nn.Sequential(model.layer1, Unknown()).eval()
    with pytest.raises(ConversionError, match=r"layer1\.1 of type .*Unknown"):
        rm.convert(model)


def test_skipped_images_are_left_out_of_evaluation_not_counted_twice(tmp_path):
    """With bad_images=skip, validation counts the 4 decodable images once each (a substitute would make
    it 5, one of them twice) and reports the skipped one; the class-a prediction is right on 2 of 4."""
    import data
    from engine.validation import evaluate

    _image_folder(tmp_path, b"not an image")
    cfg = OmegaConf.load(os.path.join(CONF_DIR, "data", "imagenet.yaml"))
    cfg.merge_with({"root": str(tmp_path), "num_classes": 2, "input_size": 16, "bad_images": "skip"})

    class ClassA(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1) + self.w

    loader = data.build_loader(cfg, "val", batch_size=2, workers=0, train=False)
    result = evaluate(ClassA(), loader, progress=False)
    assert (result["num_samples"], result["skipped"], result["top1"]) == (4, 1, 50.0)


def test_a_run_whose_data_is_missing_leaves_no_run_folder(tmp_path):
    """The data is checked before the run folder exists: a failed start leaves nothing to clean up."""
    import data
    from engine.config import check_overrides
    from jobs.train import run as run_training

    cfg = check_overrides(["model=resnet20", "model.kwargs.widths=[8,8,8]", "data=cifar10", "workers=0",
                           f"data.root={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(data.DatasetError, match="cifar10 not found"):
        run_training(cfg)
    assert not os.path.exists(tmp_path / "runs")
