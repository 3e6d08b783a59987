"""ResRep (Ding et al., ICCV 2021) on residual models and, through RM, on every layer: compactors,
gradient resetting and the mask schedule as a trainer hook, and the exact compactor fold (the job of
`resrep.py` is `jobs.resrep`)."""
from .compactor import CompactedBN, Compactor, Slot, add_compactors, compacted_slots, compactors, slots
from .fold import FoldResult, fold_compactors
from .hook import ResRepHook, reset_gradient
from .layout import CompactorLayout, resolve
from .schedule import next_masks

__all__ = ["Compactor", "CompactedBN", "Slot", "add_compactors", "compacted_slots", "compactors", "slots",
           "FoldResult", "fold_compactors", "ResRepHook", "reset_gradient", "CompactorLayout", "resolve", "next_masks"]
