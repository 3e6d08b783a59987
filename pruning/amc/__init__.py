"""AMC (He et al., ECCV 2018) channel pruning under a FLOPs budget, for the RM form and the residual
form of a model (the authors' RM + AMC): segments and cost model (`graph`), channel selection and
least-squares refit (`channels`), the environment with its budget rule (`env`), the DDPG agent
(`ddpg`) and the resumable search (`search`); the job of `amc.py` is `jobs.amc`."""
from .channels import apply_policy, collect_features
from .env import ChannelPruningEnv
from .graph import Graph, plain_graph, residual_graph
from .search import SearchSettings, search

__all__ = ["plain_graph", "residual_graph", "Graph", "collect_features", "apply_policy", "ChannelPruningEnv",
           "search", "SearchSettings"]
