"""Select a training objective by name from the training configuration.

The config names a loss (``objective: psl``) and its hyper-parameters; this module maps the name
to the class and checks the parameters against the constructor *before* building, so a typo in
a config fails with the list of valid names instead of a ``TypeError`` deep in a training job.
Each class's ``kind`` tells the trainer which inputs to feed (see the package docstring).
"""

import inspect
from typing import Any

from torch import nn

from rankforge.errors import ConfigError

from .baselines import BinaryCrossEntropyLoss, SampledSoftmaxLoss
from .bpr import BPRLoss
from .ccl import CosineContrastiveLoss
from .confidence_ranking import ConfidenceRankingLoss
from .lcron import LCRONLoss
from .psl import PairwiseSoftmaxLoss
from .welfare_rankloss import WelfareRankLoss

OBJECTIVES: dict[str, type[nn.Module]] = {
    "ccl": CosineContrastiveLoss,
    "psl": PairwiseSoftmaxLoss,
    "confidence_ranking": ConfidenceRankingLoss,
    "welfare_rankloss": WelfareRankLoss,
    "lcron": LCRONLoss,
    "sampled_softmax": SampledSoftmaxLoss,
    "bpr": BPRLoss,
    "bce": BinaryCrossEntropyLoss,
}


def build_objective(name: str, **params: Any) -> nn.Module:
    """Instantiate the objective registered as ``name`` with hyper-parameters ``params``.

    Raises ``ConfigError`` (a ``ValueError``) for an unknown name, an unknown or missing
    hyper-parameter, or a value the loss rejects; the message names the objective.
    """
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid objectives: {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    signature = inspect.signature(cls.__init__)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p for p in signature.parameters.values() if p.name != "self" and p.kind in named]
    valid = [p.name for p in accepted]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"objective {name!r}: unknown hyper-parameter(s) {unknown}; valid: {valid}")
    missing = [p.name for p in accepted if p.default is inspect.Parameter.empty and p.name not in params]
    if missing:
        raise ConfigError(f"objective {name!r}: missing required hyper-parameter(s) {missing}")
    try:
        return cls(**params)
    except ValueError as err:
        raise ConfigError(f"objective {name!r}: {err}") from err
