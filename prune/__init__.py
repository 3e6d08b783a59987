"""Network slimming through RM (paper §3.4, §4.4): sparse training, pruning of plain and residual
models, reports and the Figure 6 sweep."""
from .masks import global_threshold
from .plain import PruneResult, channel_scores, prune_plain
from .surgery import PruneError

__all__ = ["prune_plain", "channel_scores", "global_threshold", "PruneResult", "PruneError"]
