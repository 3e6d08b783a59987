"""What each reproduction recipe should compose to, and where that value comes from.

One `Group` per paper result (table rows or figure); each lists its recipes and, per setting, the
paper's words, the authors' code (repository, file and line at a fixed commit), the value ours must
have (`ref`) and, where ours differs, the reason. `paper.fidelity` composes the recipes and renders
docs/FIDELITY.md from this. Commits: RepVGG's train.py as the RMNet paper cites it (9a1de4a, June
2021; later commits replace it by main.py), RepVGG's README at eae7c52, RMNet at 4754b8e, ResRep at
a3567a1. The paper is the ICLR submission in the seeds (004); the ResRep README is seed 003.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REPVGG = "DingXiaoH/RepVGG@9a1de4a"
REPVGG_NOW = "DingXiaoH/RepVGG@eae7c52"
RMNET = "fxmeng/RMNet@4754b8e"
RESREP = "DingXiaoH/ResRep@a3567a1"
AUTHORS_STD = [0.2023, 0.1994, 0.2010]
NO_SOURCE = object()   # ref for a setting no source fixes: ours is a choice, the reason says which


@dataclass(frozen=True)
class Setting:
    label: str
    keys: tuple[str, ...]      # config keys, or one special key of paper.fidelity (bias_lr, zero_gamma)
    paper: str                 # section and phrase, or "not stated"
    authors: str               # value, repository, file:line
    ref: Any                   # what ours must be: a value (one per key), {model family: value}, or NO_SOURCE
    reason: str = ""           # why ours differs from ref (or, for NO_SOURCE, what ours is)


@dataclass(frozen=True)
class Group:
    title: str
    recipes: tuple[tuple[str, ...], ...]   # overrides of each recipe's composition (experiment=... first)
    source: str                            # which source each ref follows, in words
    settings: tuple[Setting, ...]
    config: str = "train"                  # recipes compose through train.py's config ...
    entry: str | None = None               # ... and keys they leave unset come from this entry point's config
    gpu_hours: bool = False                # recipe changed in issue 23: state its expected GPU-hours


def _s(label, keys, paper, authors, ref, reason=""):
    return Setting(label, keys if isinstance(keys, tuple) else (keys,), paper, authors, ref, reason)


def _recipes(*names: str) -> tuple[tuple[str, ...], ...]:
    return tuple((f"experiment={n}",) for n in names)


_WD_KEYS = ("optim.decay_norm_and_bias", "optim.no_decay")
_SEC42 = "§4.2, via RepVGG train.py"
_A2 = "A.2, via RepVGG train.py"
_SEC42_WORDS = ("§4.2 'we train RMNet following the official implementations of RepVGG', footnote "
                "github.com/DingXiaoH/RepVGG/blob/main/train.py")
_A2_WORDS = "A.2 'The setting of this experiment is followed by the official implementation of RepVGG'"


def _repvgg_train(paper: str, cifar: bool) -> tuple[Setting, ...]:
    """RepVGG train.py's optimisation (the paper's pointer for Table 1 and Table 3)."""
    cifar_epochs = f"; the RMNet authors' CIFAR script trains 200 ({RMNET} train_pruning.py:131)" if cifar else ""
    return (
        _s("epochs", "epochs", paper, f"120: {REPVGG} train.py:31{cifar_epochs}", 120),
        _s("global batch", "global_batch_size", paper, f"256 over all GPUs: {REPVGG} train.py:35", 256),
        _s("lr, for a batch of", ("optim.lr", "optim.lr_batch"), paper, f"0.1 at 256: {REPVGG} train.py:42",
           (0.1, 256)),
        _s("momentum, Nesterov", ("optim.momentum", "optim.nesterov"), paper,
           f"0.9 ({REPVGG} train.py:44), plain SGD (train.py:92)", (0.9, False)),
        _s("weight decay", "optim.weight_decay", paper, f"1e-4: {REPVGG} train.py:46", 1e-4),
        _s("no weight decay on (decay everything; rule)", _WD_KEYS, paper,
           f"names containing 'bias' or 'bn' (so downsample.1 and rbr_identity decay): {REPVGG} train.py:86; "
           f"{RMNET} train.py:82", (False, "names")),
        _s("bias lr factor", "optim.bias_lr_factor", paper,
           f"2x, 'Made no difference': {REPVGG} train.py:90; {RMNET} train.py:86", 2.0),
        _s("schedule (name, final lr ratio, warm-up epochs)", ("sched.name", "sched.min_lr_ratio", "sched.warmup_epochs"),
           paper, f"cosine to 0 over all iterations, stepped per iteration, no warm-up: {REPVGG} train.py:195, :304",
           ("cosine", 0.0, 0)),
        _s("label smoothing", "label_smoothing", paper, f"none (CrossEntropyLoss): {REPVGG} train.py:191", 0.0),
        _s("zero-γ last BN of each block", "zero_gamma", "not stated",
           f"RMNet bn3 γ=0: {RMNET} models/rmnext.py:159-160; ResNets keep γ=1 ({RMNET} models/resnet2vgg.py)",
           {"rmnet": True, "resnet": False}),
    )


def _cifar_data(cifar10: bool, reason_std: str = "") -> tuple[Setting, ...]:
    std_ref = AUTHORS_STD if cifar10 else NO_SOURCE
    std_why = reason_std or ("" if cifar10 else "the authors publish no CIFAR-100 script; ours is "
                             "CIFAR-100's own per-channel std (conf/data/cifar100.yaml)")
    return (
        _s("train augmentation (crop, pad, flip)", ("data.augment.crop", "data.augment.pad", "data.augment.hflip"),
           "not stated", f"RandomCrop(32, padding=4) + flip: {RMNET} train_pruning.py:30-31", ("pad", 4, 0.5)),
        _s("normalisation std", "data.std", "not stated", f"(0.2023, 0.1994, 0.2010): {RMNET} train_pruning.py:33",
           std_ref, std_why),
    )


_IMAGENET_DATA = (
    _s("train crop", "data.augment.crop", _A2, f"RandomResizedCrop(224) + flip: {REPVGG} utils.py:163-165", "resized"),
    _s("test crop ratio", "data.augment.crop_pct", _A2, f"Resize(256) + CenterCrop(224): {REPVGG} utils.py:177-178",
       0.875),
)

_SEC41 = {"epochs": "§4.1 'number of epochs (200)'", "batch": "§4.1 'mini-batch size (256)'",
          "lr": "§4.1 'initial learning rate (0.1)'", "momentum": "§4.1 'optimizer (SGD)', 'momentum (0.9)'",
          "wd": "§4.1 'weight decay (0.0005)'", "sched": "§4.1 'learning rate decay 0.1 at every 60 epochs'"}
_NO_CODE = "no published script (the authors' train.py is ImageNet's, train_pruning.py is cosine)"


def _sec41(stated: bool) -> tuple[Setting, ...]:
    paper = _SEC41 if stated else dict.fromkeys(_SEC41, "not stated for Table 2; §4.1's recipe is used")
    return (
        _s("epochs", "epochs", paper["epochs"], _NO_CODE, 200),
        _s("global batch", "global_batch_size", paper["batch"], _NO_CODE, 256),
        _s("lr, for a batch of", ("optim.lr", "optim.lr_batch"), paper["lr"], _NO_CODE, (0.1, 256)),
        _s("momentum, Nesterov", ("optim.momentum", "optim.nesterov"), paper["momentum"], _NO_CODE, (0.9, False)),
        _s("weight decay, also on BN and biases", ("optim.weight_decay", "optim.decay_norm_and_bias"), paper["wd"],
           f"5e-4 on all parameters in the authors' CIFAR script: {RMNET} train_pruning.py:66", (5e-4, True)),
        _s("schedule (name, every, factor)", ("sched.name", "sched.step_epochs", "sched.gamma"), paper["sched"],
           _NO_CODE, ("step", 60, 0.1)),
    )


_T2_STD = ("no source fixes it: the authors publish no Table 2 script and the paper gives no normalisation, so the "
           "table2_* recipes keep the dataset's own std; the authors' CIFAR-10 std (in their pruning and AMC "
           "scripts) differs by a per-channel input scale of at most 1.4x, which the first conv and its BN absorb")
_SEEDS = _s("runs per row", "runs", "Table 2 '92.07±0.18': several runs", "not published", "3 seeds",
            "one seed per command; `python train.py -m experiment=<recipe> seed=0,1,2 'run_name=<recipe>_s${seed}'` "
            "then `python -m paper.seeds checkpoints` prints mean ± std (docs/reproducing-the-paper.md, Seeds)")

_T1_CIFAR = ("table1_resnet34", "table1_repvgg_a2", "table1_rmnet26x3_32")
_T1_IMAGENET = ("resnet50", "rmnet41x4_8", "resnext50_32x4d", "repvgg_b1", "rmnet41x5_16", "resnet101", "repvgg_b2",
                "rmnet50x5_32", "resnet152", "repvgg_b3", "rmnet50x6_32", "resnext101_32x8d", "rmnet101x6_16",
                "rmnet152x6_32")
_REPVGG_README = f"{REPVGG_NOW} README.md:127"

GROUPS_TRAIN = (
    Group("Table 1, CIFAR-10", _recipes(*(f"{n}_cifar10" for n in _T1_CIFAR)),
          f"RepVGG train.py ({_SEC42_WORDS}); CIFAR parts from the RMNet authors' CIFAR script",
          _repvgg_train(_SEC42, True) + _cifar_data(True), gpu_hours=True),
    Group("Table 1, CIFAR-100", _recipes(*(f"{n}_cifar100" for n in _T1_CIFAR)),
          f"RepVGG train.py ({_SEC42_WORDS}); CIFAR parts from the RMNet authors' CIFAR script",
          _repvgg_train(_SEC42, True) + _cifar_data(False), gpu_hours=True),
    Group("Table 1, ImageNet", _recipes(*(f"table1_{n}" for n in _T1_IMAGENET)), f"RepVGG train.py ({_SEC42_WORDS})",
          _repvgg_train(_SEC42, False) + _IMAGENET_DATA),
    Group("Table 3", _recipes("table3_resnet18", "table3_repvgg_resnet18", "table3_resnet34", "table3_repvgg_resnet34"),
          f"RepVGG train.py ({_A2_WORDS})", _repvgg_train(_A2, False) + _IMAGENET_DATA),
    Group("The authors' README depth table", _recipes(*(f"depth_{f}{d}" for d in (21, 37, 69, 133) for f in ("repvgg", "rmrepvgg"))),
          f"RepVGG train.py, as for Table 3 (the RMNet authors' README trains rmrep_<N> with their train.py, "
          f"a copy of it: {RMNET} train.py)", _repvgg_train("not in the paper", False) + _IMAGENET_DATA),
    Group("Figure 5, CIFAR-10", (("experiment=fig5_depth_cifar10", "model=repvgg21"),
                                 ("experiment=fig5_depth_cifar10", "model=rmrepvgg133")),
          "§4.1 (the sweep trains repvgg/rmrepvgg 21, 37, 69, 133; two shown)", _sec41(True) + _cifar_data(True)),
    Group("Figure 5, CIFAR-100", (("experiment=fig5_depth_cifar100", "model=repvgg21"),
                                  ("experiment=fig5_depth_cifar100", "model=rmrepvgg133")),
          "§4.1 (the sweep trains repvgg/rmrepvgg 21, 37, 69, 133; two shown)", _sec41(True) + _cifar_data(False)),
    Group("Table 2", _recipes(*(f"table2_{m}_{d}" for d in ("cifar10", "cifar100") for m in ("mobilenetv2_rm", "mobilenetv1"))),
          "§4.1 (the paper gives no Table 2 schedule)",
          _sec41(False) + _cifar_data(True, _T2_STD) + (_SEEDS,)),
    Group("ImageNet, RepVGG README's 300-epoch alternative", (("experiment=imagenet_repvgg_300ep", "model=repvgg_b1"),),
          f"RepVGG README 'Reproduce original RepVGG results' ({_REPVGG_README}); "
          "the paper cites train.py (120 epochs), which paper_imagenet / table1_* follow",
          (_s("epochs", "epochs", "not the paper's (it cites train.py)", f"300: {_REPVGG_README}", 300),
           _s("global batch", "global_batch_size", "-", f"8 GPUs x 32: {_REPVGG_README}", 256),
           _s("lr, for a batch of", ("optim.lr", "optim.lr_batch"), "-", f"0.1 at 256: {_REPVGG_README}", (0.1, 256)),
           _s("Nesterov", "optim.nesterov", "-", f"yes: {REPVGG_NOW} train/optimizer.py:26", True),
           _s("weight decay", "optim.weight_decay", "-", f"1e-4: {_REPVGG_README}", 1e-4),
           _s("no weight decay on (decay everything; rule)", _WD_KEYS, "-",
              f"1-d tensors and biases except identity.weight: {REPVGG_NOW} train/optimizer.py:48-53 (on RepVGG "
              "the parameters the name rule picks)", (False, "names")),
           _s("bias lr factor", "optim.bias_lr_factor", "-", f"1x, one lr: {REPVGG_NOW} train/optimizer.py:26-27", 1.0),
           _s("warm-up epochs (from lr 0)", "sched.warmup_epochs", "-",
              f"5 (train/config.py:66 WARMUP_LR 0): {_REPVGG_README}", 5),
           _s("label smoothing", "label_smoothing", "-", f"0.1: {_REPVGG_README}", 0.1),
           _s("train crop", "data.augment.crop", "-", f"'weak': RandomResizedCrop + flip, {REPVGG_NOW} data/build.py:150-153",
              "resized"),
           _s("test crop ratio", "data.augment.crop_pct", "-",
              f"Resize(224) + CenterCrop(224): {REPVGG_NOW} data/build.py:179-180", 1.0)),
          gpu_hours=True),
)

_SEC44 = "§4.4 'The sparsity factor is selected from 1e-4 to 1e-3, and the threshold is selected from 5e-4 to 5e-3'"
_TP = f"{RMNET} train_pruning.py"
_AMC = f"{RMNET} RM+AMC/"
_NNI = "NNI AMCPruner default, which RM+AMC/amc_search.py:116 uses"
_AMC_RATIOS = ("0.5", "0.6", "0.7", "0.75")
_AMC_DATA = {
    "cifar10": ("seed 001: CIFAR-10", f"--dataset cifar10: {_AMC}amc_train.py:30, README.md:49, :59", "cifar10", (
        _s("normalisation std", "data.std", "not stated", f"(0.2023, 0.1994, 0.2010): {_AMC}data.py:22, :94",
           AUTHORS_STD),
        _s("train augmentation (crop, pad, flip)", ("data.augment.crop", "data.augment.pad", "data.augment.hflip"),
           "not stated", f"RandomCrop(32, padding=4) + flip: {_AMC}data.py:19-20", ("pad", 4, 0.5)),
        _s("held-out images", "amc.holdout", "not stated", f"5000 for CIFAR: {_AMC}amc_search.py:58", 5000))),
    "imagenet": ("seed 001: CIFAR-10; this recipe reads the table as ImageNet",
                 f"--dataset imagenet: {_AMC}amc_train.py:53-54; baseline 71.79%: {_AMC}README.md:77 (ImageNet's "
                 "MobileNetV2 top-1; ambiguous, docs/incoming/rm_amc.md)", "imagenet", (
        _s("normalisation std", "data.std", "not stated", f"ImageNet's: {_AMC}data.py:50", [0.229, 0.224, 0.225]),
        _s("train crop", "data.augment.crop", "not stated",
           f"RandomResizedCrop(224, scale=(0.2, 1.0)) + flip: {_AMC}data.py:47-48", "resized, scale (0.2, 1)",
           "ours is RandomResizedCrop's default scale (0.08, 1), torchvision's ImageNet recipe: the data "
           "config has no crop-scale setting (data/transforms.py)"),
        _s("test crop ratio", "data.augment.crop_pct", "not stated",
           f"Resize(256) + CenterCrop(224): {_AMC}data.py:53-54", 0.875),
        _s("held-out images", "amc.holdout", "not stated", f"3000 for ImageNet: {_AMC}amc_search.py:58", 3000))),
}
_ACTS = ("ReLU in place of ReLU6", "ours replaces every ReLU6 (stem, blocks without shortcut and last conv too): "
         "the plain chain has ReLU and PReLU only (rm/walker.py); the difference is measured and reported, "
         "and step 2's fine-tuning follows, as theirs does")


def _amc(data: str) -> tuple[Setting, ...]:
    """The RM+AMC recipes: the authors' RM+AMC/ scripts and the NNI AMCPruner defaults they run."""
    paper_data, authors_data, data_ref, data_rows = _AMC_DATA[data]
    return (
        _s("model", "model.name", "seed 001: MobileNetV2 converted to MobileNetV1",
           f"MobileNetV2 t=6, 16-320 channels, 1280, ReLU6, dropout 0.2: {_AMC}models/rmnet.py:7-20, :65-108",
           "mobilenetv2"),
        _s("RM conversion", "amc.relu6", "seed 001: 'convert ... to MobileNetV1'",
           f"ReLU6 -> PReLU slope 0 (ReLU) in the 10 blocks with a shortcut, ReLU6 kept elsewhere: "
           f"{_AMC}models/rmnet.py:260-262, :278-280, :294-302", "residual blocks ReLU, ReLU6 elsewhere",
           f"{_ACTS[0]} (amc.relu6=approximate): {_ACTS[1]}"),
        _s("data", "data.name", paper_data, authors_data, data_ref),
        _s("training epochs", "epochs", "not stated", f"150: {_AMC}amc_train.py:36", 150),
        _s("global batch", "global_batch_size", "not stated", f"256: {_AMC}amc_train.py:33", 256),
        _s("lr, momentum", ("optim.lr", "optim.momentum"), "not stated",
           f"0.05 ({_AMC}amc_train.py:31), 0.9 (amc_train.py:210)", (0.05, 0.9)),
        _s("weight decay, also on BN and biases", ("optim.weight_decay", "optim.decay_norm_and_bias"),
           "not stated", f"4e-5 on every parameter: {_AMC}amc_train.py:37, :210", (4e-5, True)),
        _s("schedule, stepped per epoch", ("sched.name", "sched.per_epoch"), "not stated",
           f"cosine to 0, set once per epoch: {_AMC}amc_train.py:157-159, :224-225", ("cosine", True)),
        *data_rows,
        _s("RM form fine-tuning, pruned fine-tuning epochs", ("amc.rm_finetune_epochs", "amc.finetune_epochs"),
           "seed 001: 'fine-tune'", f"amc_train.py's 150: {_AMC}README.md:46-50, :66-70", (150, 150)),
        _s("FLOPs ratio of", "amc.budget.of", "not stated",
           f"the pruned model's own MACs (MobileNetV1 for RM + AMC): {_AMC}amc_search.py:23, :116-119", "own"),
        _s("episodes, keep-ratio bounds", ("amc.episodes", "amc.lbound", "amc.rbound"), "not stated",
           f"800, 0.2, 1.0: {_AMC}amc_search.py:24-28", (800, 0.2, 1.0)),
        _s("search reward", ("amc.reward", "amc.reward_metric"), "not stated",
           f"accuracy (NNI acc_reward) of top-5: {_AMC}amc_search.py:102", ("acc", "top5")),
        _s("noise (initial, decay per episode), warm-up", ("amc.agent.noise", "amc.agent.noise_decay", "amc.warmup"),
           "not stated", f"0.5, 0.99, 100: {_NNI}", (0.5, 0.99, 100)),
        _s("agent (hidden, lr actor, lr critic, tau, batch, memory per layer)",
           tuple(f"amc.agent.{k}" for k in ("hidden", "lr_actor", "lr_critic", "tau", "batch_size", "memory_per_layer")),
           "not stated", f"300, 1e-4, 1e-3, 0.01, 64, 100: {_NNI}", (300, 1e-4, 1e-3, 0.01, 64, 100)),
        _s("calibration batches x images, points per batch, channel multiple",
           ("amc.feature_batches", "amc.search_batch_size", "amc.points_per_image", "amc.channel_round"), "not stated",
           f"60 x 50 (--batch_size: {_AMC}amc_search.py:21), 10, 8: {_NNI}", (60, 50, 10, 8)),
        _s("which held-out images (ours: a permutation seeded by)", "seed", "not stated",
           f"the first of the training set, in order: {_AMC}data.py:103-107 (CIFAR), a shuffled split (ImageNet, "
           "data.py:139-142)", "the first, unshuffled",
           "ours draws both data sets' held-out images by `seed` (jobs/amc.search_loaders); CIFAR-10's "
           "training files are not ordered by class, so the first 5,000 are an arbitrary sample too"),
        _s("calibration images", "amc.holdout", "not stated",
           f"the held-out images the reward is scored on: {_NNI}", "the held-out images",
           "ours samples the feature maps from other training images, disjoint from the held-out ones "
           "(jobs/amc.search_loaders): no policy is scored on images its least-squares refit saw"),
    )


_RR56, _RR50 = f"{RESREP} rr/exp_resrep.py", f"{RESREP} rr/exp_resrep.py"
_SEED3 = "not stated (the ResRep README, seed 003, runs rr/exp_resrep.py)"

_MODELS_TP = f"{RMNET} models/rmnet_pruning.py"
_PAPER_VARIANT = "the paper's variant, figure6_bn_scale: "


def _fig6_training() -> tuple[Setting, ...]:
    """train_pruning.py's training, the same for sparse training and fine-tuning (the script runs twice)."""
    return (
        _s("data", "data.name", "Figure 6 'CIFAR10 accuracy'", f"CIFAR-10: {_TP}:41-44", "cifar10"),
        *_cifar_data(True),
        _s("sparse-training epochs", "epochs", "not stated", f"200: {_TP}:131", 200),
        _s("fine-tuning epochs, lr", ("prune.finetune_epochs", "prune.finetune_lr"), "not stated",
           f"the same script with --finetune, 200 epochs at --lr: {_TP}:14, :56-62, :131", (200, None)),
        _s("lr, for a batch of; global batch", ("optim.lr", "optim.lr_batch", "global_batch_size"), "not stated",
           f"0.1 at batch 128: {_TP}:14, :44", (0.1, 128, 128)),
        _s("momentum, Nesterov", ("optim.momentum", "optim.nesterov"), "not stated", f"0.9, plain SGD: {_TP}:66",
           (0.9, False)),
        _s("weight decay, also on BN, biases and masks", ("optim.weight_decay", "optim.decay_norm_and_bias"),
           "not stated", f"5e-4 on every parameter: {_TP}:66", (5e-4, True)),
        _s("bias lr factor", "optim.bias_lr_factor", "not stated", f"1x, one lr: {_TP}:66", 1.0),
        _s("schedule (name, final lr ratio, warm-up epochs, stepped per epoch)",
           ("sched.name", "sched.min_lr_ratio", "sched.warmup_epochs", "sched.per_epoch"),
           "not stated", f"CosineAnnealingLR(T_max=200) stepped per epoch: {_TP}:67, :134", ("cosine", 0.0, 0, True)),
        _s("L1 factor", "prune.sr", _SEC44, f"--sr, no default: {_TP}:15", NO_SOURCE,
           "one point of the paper's range; the sweep in the recipe's header covers 1e-4 .. 1e-3"),
        _s("threshold", "prune.threshold", _SEC44, f"--threshold, no default: {_TP}:16", NO_SOURCE,
           "one point of the paper's range; the sweep covers 5e-4 .. 5e-3"),
    )


def _fig6_method(paper_variant: bool) -> tuple[Setting, ...]:
    """What is penalised and pruned: the authors' masks, or (paper_variant) the BN scales the paper names."""
    why = dict.fromkeys(("model", "penalty", "every", "forms", "scheme"), "") if not paper_variant else {
        "model": _PAPER_VARIANT + "resnet18, their network without masks, with a BN on every identity shortcut "
                 "(prune.py sets model.kwargs.shortcut_bn; §3.4 'an additional BN layer should be added in the residual "
                 "connection') whose scales rank the reserved channels",
        "penalty": _PAPER_VARIANT + "the scales the paper names",
        "every": _PAPER_VARIANT + "§3.4 prunes once after sparse training; the authors' masking is figure6_mask_conv",
        "forms": _PAPER_VARIANT + "the residual model is pruned too, the comparison Figure 6 draws; the residual "
                 "pruner ranks BN scales, which this variant has",
        "scheme": _PAPER_VARIANT + "the reserved channels carry the shortcut BN's output, whose scale ranks them"}
    return (
        _s("model", "model.name", "§4.4 'pruning RMNet'", f"rmnet_pruning_18 (ResNet-18 + 1x1 mask convs): {_TP}:53",
           "rmnet_pruning_18", why["model"]),
        _s("penalised scales", "prune.penalty", "§4.4 'L1 norm ... to punish the weight of BN layers'",
           f"L1 on separate depthwise 1x1 mask convs: {_MODELS_TP}:157-161", "mask_conv", why["penalty"]),
        _s("threshold applied every step", "prune.threshold_every_step",
           "§3.4 'After training, we convert ResNet into RMNet and prune the filters'",
           f"update_mask between backward and step: {_TP}:82-83, {_MODELS_TP}:162-164", True, why["every"]),
        _s("channels removed", "prune.threshold",
           "§4.4 'regard the channels whose weight is smaller than a certain threshold as invalid'",
           f"every mask not 0 in the saved model is kept: {_MODELS_TP}:200", NO_SOURCE,
           "the channels whose scale is under prune.threshold go (masked every step: the mask the next step would "
           "apply); theirs keeps every mask that is not 0, also those the last steps' momentum moved off 0 "
           "(pruning/penalty.py)"),
        _s("pruned forms", "prune.forms", "§4.4 'RMNet retains higher accuracy than ResNet under a larger pruning ratio'", f"the RM form only: {_TP}:62", ["rm"],
           why["forms"]),
        _s("reserved channels (downsample scheme)", "conversion.downsample", "not stated",
           f"the masked block input, the shortcut conv in the merge: {_MODELS_TP}:57-84", "reserve_input",
           why["scheme"]),
    )


GROUPS_PRUNE = (
    Group("Figure 6 (network slimming) as the authors ran it", _recipes("figure6_mask_conv"),
          "the authors' train_pruning.py and models/rmnet_pruning.py; the paper's §4.4 where it says more",
          _fig6_training() + _fig6_method(paper_variant=False), config="prune", gpu_hours=True),
    Group("Figure 6 (network slimming), the paper's BN-scale variant", _recipes("figure6_bn_scale"),
          "the authors' training (train_pruning.py) with the penalty the paper states (§3.4, §4.4)",
          _fig6_training() + _fig6_method(paper_variant=True), config="prune", gpu_hours=True),
    Group("Authors' RM+AMC table, CIFAR-10", _recipes(*(f"amc_cifar10_r{r}" for r in _AMC_RATIOS)),
          "NNI's AMC example as the authors' RM+AMC README runs it (seed 001); ours on the exact ReLU "
          "mobilenetv2_rm: amc_cifar10_ours", _amc("cifar10"), entry="amc"),
    Group("Authors' RM+AMC table, read as ImageNet", _recipes(*(f"amc_imagenet_r{r}" for r in _AMC_RATIOS)),
          "the same steps with the authors' scripts' ImageNet settings (their 71.79% baseline is ImageNet's "
          "MobileNetV2; their commands say CIFAR-10)", _amc("imagenet"), entry="amc"),
    Group("ResRep, ResNet-56 on CIFAR-10", _recipes("resrep_resnet56_cifar10"),
          "the ResRep authors' rr/exp_resrep.py -a src56", (
              _s("model", "model.name", "ResRep README (seed 003): 'ResNet-56 on CIFAR-10'", f"src56: {_RR56}:47", "resnet56"),
              _s("epochs, lr, final lr", ("resrep.epochs", "resrep.lr", "sched.min_lr_ratio"), _SEED3,
                 f"480, 0.01 cosine to 0: {_RR56}:56-57", (480, 0.01, 0.0)),
              _s("batch, weight decay, momentum", ("batch_size", "optim.weight_decay", "optim.momentum"), _SEED3,
                 f"64, 1e-4: {_RR56}:48-49; 0.9: :75", (64, 1e-4, 0.9)),
              _s("MACs removed", "resrep.target", "ResRep README (seed 003): 'pruning ratio of 52.9% (FLOPs)'",
                 f"flops_target=0.471 kept: {_RR56}:60", 0.529),
              _s("lasso, mask interval, mask start, granularity",
                 ("resrep.lasso", "resrep.interval", "resrep.start_epochs", "resrep.granularity"), _SEED3,
                 f"1e-4, 200, 5 epochs, 4: {_RR56}:59-62", (1e-4, 200, 5, 4)),
              _s("compactor momentum", "resrep.compactor_momentum", _SEED3, f"0.99: {_RR56}:61", 0.99),
          ), entry="resrep"),
    Group("ResRep, ResNet-50 on ImageNet", _recipes("resrep_resnet50_imagenet"),
          "the ResRep authors' rr/exp_resrep.py -a sres50", (
              _s("model", "model.name", "ResRep README (seed 003): 'ResNet-50 on ImageNet'", f"sres50: {_RR50}:29", "resnet50"),
              _s("epochs, lr, final lr", ("resrep.epochs", "resrep.lr", "sched.min_lr_ratio"), _SEED3,
                 f"180, 0.01 cosine to 0: {_RR50}:39-40", (180, 0.01, 0.0)),
              _s("global batch, weight decay, momentum", ("global_batch_size", "optim.weight_decay", "optim.momentum"),
                 _SEED3, f"256, 1e-4: {_RR50}:30-31; 0.9: :75", (256, 1e-4, 0.9)),
              _s("MACs removed", "resrep.target", "ResRep README (seed 003): '54.5% pruning ratio'",
                 f"flops_target=0.455 kept: {_RR50}:43", 0.545),
              _s("lasso, mask interval, mask start, granularity",
                 ("resrep.lasso", "resrep.interval", "resrep.start_epochs", "resrep.granularity"), _SEED3,
                 f"1e-4, 200, 5 epochs, 4: {_RR50}:42-45", (1e-4, 200, 5, 4)),
              _s("compactor momentum", "resrep.compactor_momentum", _SEED3, f"0.99: {_RR50}:44", 0.99),
          ), entry="resrep"),
)

GROUPS = GROUPS_TRAIN + GROUPS_PRUNE
