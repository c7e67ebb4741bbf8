"""The platform's end-to-end slice: log -> trained models -> registry -> Redis -> gRPC answers."""

from pathlib import Path

import polars as pl
import pytest
from mlflow import MlflowClient

from rankforge.pipelines.demo import run_demo
from rankforge.training.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def small(path: str, tmp: Path, seed: int = 0) -> TrainConfig:
    config = load_config(REPO / path)
    synthetic = config.data.synthetic.model_copy(update={"n_users": 80, "n_items": 120})
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"synthetic": synthetic}),
            "training": config.training.model_copy(update={"epochs": 1}),
            "output_dir": tmp / Path(path).stem,
            "seed": seed,
        }
    )


@pytest.mark.slow
@pytest.mark.redis
def test_demo_end_to_end(rankforge_home: Path, redis_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(
        small("configs/retrieval.toml", tmp_path),
        small("configs/ranking.toml", tmp_path),
        n_users=3,
        k=4,
        say=lines.append,
        ads_config=small("configs/ads.toml", tmp_path),
    )
    client = MlflowClient()
    for name, trained in (("rankforge-retrieval", result.retrieval), ("rankforge-ranker", result.ranker)):
        assert trained.registered is not None and trained.registered.version == 1
        assert int(client.get_model_version_by_alias(name, "champion").version) == 1
        run = client.get_run(trained.run_id)
        assert "train_loss" in run.data.metrics
    assert len(result.answers) == 3
    for answer in result.answers.values():
        assert len(answer.items) == 4
        assert answer.retrieval_version == "rankforge-retrieval/1"
        assert answer.ranker_version == "rankforge-ranker/1"
        assert answer.feature_version == result.feature_version
        scores = [i.score for i in answer.items]
        assert scores == sorted(scores, reverse=True)
        assert len({i.item_id for i in answer.items}) == 4
    assert any(line.startswith("      user ") for line in lines)
    assert pl.Series(list(result.answers)).is_unique().all()
    assert all(d.reasons == ["version 1 already is the champion"] for d in result.decisions.values())
    # the ads path: BCE is the first (champion) ad ranker, the welfare-rankloss one challenges it on
    # held-out auctions, and the server runs an auction with whichever is champion
    bce, welfare = result.ad_rankers
    assert (bce.registered.version, welfare.registered.version) == (1, 2)
    assert "welfare_ratio" in bce.metrics and "welfare_ratio" in welfare.metrics
    assert any("welfare_ratio (higher is better)" in line for line in lines)
    champion = int(client.get_model_version_by_alias("rankforge-ad-ranker", "champion").version)
    auction = result.auction
    assert auction is not None and auction.ranker_version == f"rankforge-ad-ranker/{champion}"
    ecpms = [a.ecpm for a in auction.ads]
    assert len(ecpms) == 5 and ecpms == sorted(ecpms, reverse=True)
    assert all(0 <= a.price <= a.bid for a in auction.ads)

    # the scheduled re-run trains different models (another seed, as new data would; a
    # byte-identical model is not registered again): new versions challenge the champions and the
    # service serves whichever won
    again = run_demo(
        small("configs/retrieval.toml", tmp_path / "2", seed=1),
        small("configs/ranking.toml", tmp_path / "2", seed=1),
        n_users=2,
        k=3,
        say=lines.append,
        ads_config=None,
    )
    for name, decision in again.decisions.items():
        assert (decision.champion_version, decision.challenger_version) == (1, 2)
        assert decision.report_run_id is not None and decision.reasons
        champion = int(client.get_model_version_by_alias(name, "champion").version)
        assert champion == (2 if decision.applied else 1)
        short = name.removeprefix("rankforge-")
        served = {getattr(a, f"{short}_version") for a in again.answers.values()}
        assert served == {f"{name}/{champion}"}
