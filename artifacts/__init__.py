"""Files in, typed models out: the one way this project reads and writes models.

    art = artifacts.load("checkpoints/run/best.pt")        # any file a user has
    art.kind, art.spec, art.model                          # "train", ModelSpec(...), nn.Module
    plain = artifacts.to_plain(art, ConversionPolicy())    # RM, verified, refused above tolerance
    artifacts.save_plain(plain.model, plain.spec, "deploy.pt", verify=plain.meta["verify"])

Depends on `models` and `rm` only; the trainer, the tools and the pruners build on it.
"""
from rm import CheckpointError

from .formats import PRUNED_FORMAT, TRAIN_FORMAT, TRAIN_VERSION, model_entries, save_plain, save_pruned
from .layouts import extract_state_dict
from .load import KINDS, Artifact, classifier_width, load
from .policy import ConversionPolicy, ConversionToleranceError, check_plain, to_plain

__all__ = ["load", "Artifact", "KINDS", "CheckpointError", "ConversionPolicy", "ConversionToleranceError",
           "to_plain", "check_plain", "save_plain", "save_pruned", "model_entries", "extract_state_dict",
           "classifier_width", "TRAIN_FORMAT", "TRAIN_VERSION", "PRUNED_FORMAT"]
