"""A retrieval-then-rank cascade as one network: the two-tower and the DLRM ranker, trained jointly.

Trained with LCRON (``rankforge.training.objectives.lcron``), the two stages learn together what
the *cascade* gets right — the ground-truth items surviving retrieval's top-k and then ranking's —
instead of each stage optimising its own proxy. After training the stages are exported and served
separately, exactly like independently trained models.
"""

from __future__ import annotations

from torch import nn

from rankforge.models.ranking import RankingModel
from rankforge.models.two_tower import TwoTower


class CascadeModel(nn.Module):
    def __init__(self, retrieval: TwoTower, ranker: RankingModel) -> None:
        super().__init__()
        self.retrieval = retrieval
        self.ranker = ranker
