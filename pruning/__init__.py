"""Network slimming through RM (paper §3.4, §4.4): pruning of plain chains and of ResNets, the
slimming pruner of `prune.py` (`jobs.prune`), the one job every pruner runs through
(`pruning.job`), reports and the Figure 6 plot. ResRep (`resrep.py`) is `pruning.resrep`."""
from .masks import global_threshold
from .plain import PruneResult, channel_scores, prune_plain
from .residual import prune_residual, residual_scores
from .surgery import PruneError

__all__ = ["prune_plain", "prune_residual", "channel_scores", "residual_scores", "global_threshold",
           "PruneResult", "PruneError"]
