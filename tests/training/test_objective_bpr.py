"""BPR against a per-pair loop transcription of Rendle et al.'s formula -ln sigma(x_ui - x_uj)."""

import math

import pytest
import torch

from rankforge.models.scoring import Scoring
from rankforge.training.objectives import BPRLoss


def _reference(user, pos, neg, mask, cosine=False):
    total = 0.0
    for b in range(user.shape[0]):
        u = user[b] / user[b].norm() if cosine else user[b]
        terms = []
        for j in range(neg.shape[1]):
            if not mask[b, j]:
                continue
            i_vec = pos[b] / pos[b].norm() if cosine else pos[b]
            j_vec = neg[b, j] / neg[b, j].norm() if cosine else neg[b, j]
            x = float(u @ i_vec - u @ j_vec)
            terms.append(-math.log(1.0 / (1.0 + math.exp(-x))))
        total += sum(terms) / len(terms) if terms else 0.0
    return total / user.shape[0]


@pytest.mark.parametrize("cosine", [False, True])
def test_bpr_matches_the_formula(cosine):
    torch.manual_seed(3)
    user, pos, neg = torch.randn(5, 6), torch.randn(5, 6), torch.randn(5, 7, 6)
    mask = torch.rand(5, 7) > 0.3
    mask[2] = False  # a user with no valid negative contributes 0
    loss = BPRLoss("cosine" if cosine else "dot")(user, pos, neg, mask)
    assert float(loss) == pytest.approx(_reference(user, pos, neg, mask, cosine), rel=1e-5)


def test_bpr_shared_negatives_equal_broadcast_ones():
    torch.manual_seed(4)
    user, pos, shared = torch.randn(4, 8), torch.randn(4, 8), torch.randn(9, 8)
    loss = BPRLoss()
    assert float(loss(user, pos, shared)) == pytest.approx(
        float(loss(user, pos, shared.expand(4, 9, 8))), rel=1e-6
    )


def test_objectives_declare_the_scoring_their_model_keeps():
    from rankforge.training.objectives import build_objective

    assert Scoring.of(build_objective("ccl")) == Scoring("cosine")
    assert Scoring.of(build_objective("bpr")) == Scoring("dot")
    psl = build_objective("psl", similarity="cosine", score_temperature=2.0)
    assert Scoring.of(psl) == Scoring("cosine", 2.0)
    assert Scoring.of(build_objective("sampled_softmax", similarity="cosine")).similarity == "cosine"
