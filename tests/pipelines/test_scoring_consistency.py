"""One scoring function per model: what a cosine objective trains is what validation logs, what
the bundle exports and what serving would rank — checked against an independent re-scoring."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
from mlflow import MlflowClient

from rankforge.bundles.bundle import load_bundle
from rankforge.features.pipeline import prepare
from rankforge.models.inputs import pad_lists
from rankforge.pipelines.train import run_training
from rankforge.settings import Settings
from rankforge.training.config import load_config

CONFIG = """
seed = 2
output_dir = "{out}"
[data]
history_len = 10
validation_fraction = 0.2
[data.synthetic]
n_users = 80
n_items = 120
seed = 5
[model]
kind = "{kind}"
embedding_dim = 8
init_std = 0.1
[objective]
name = "{objective}"
params = {params}
[optimizer]
sparse = "adam"
sparse_lr = 0.01
[training]
epochs = 3
batch_size = 64
[negatives]
count = 30
shared = true
[mlflow]
experiment = "scoring-test"
register_model = false
"""


def _recall_at_20(user_vectors: np.ndarray, items: np.ndarray, test: dict, known: dict) -> float:
    """Recall@20 by hand: hits in the top 20 unknown items / number of held-out items, per user."""
    recalls = []
    for row, (user, relevant) in enumerate(test.items()):
        scores = items @ user_vectors[row]
        ranked = [i for i in np.argsort(-scores, kind="stable") if i not in known.get(user, set())][:20]
        recalls.append(len(set(ranked) & relevant) / len(relevant))
    return float(np.mean(recalls))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "objective", "params"),
    [
        ("simplex", "ccl", "{ margin = 0.5, negative_weight = 20.0 }"),
        ("mf", "psl", '{ similarity = "cosine", score_temperature = 2.0, temperature = 0.2 }'),
    ],
)
def test_logged_recall_equals_rescoring_the_exported_bundle(
    kind: str, objective: str, params: str, rankforge_home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "job.toml"
    path.write_text(CONFIG.format(out=tmp_path / "job", kind=kind, objective=objective, params=params))
    config = load_config(path)
    result = run_training(config)

    bundle = load_bundle(result.bundle_dir, expect="retrieval")
    assert bundle.manifest.scoring["similarity"] == "cosine"
    items = bundle.item_embeddings()
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)  # cosine: unit rows

    data = prepare(config.data)
    test_frame = data.test_positives()
    test: dict[int, set[int]] = {}
    for user, item in zip(test_frame["user_idx"], test_frame["item_idx"], strict=True):
        test.setdefault(user, set()).add(item)
    test = dict(sorted(test.items()))
    known: dict[int, set[int]] = {}
    for user, item in zip(data.known_events()["user_idx"], data.known_events()["item_idx"], strict=True):
        known.setdefault(user, set()).add(item)
    users = np.array(list(test), dtype=np.int64)
    histories = data.user_features.sort("user_idx")["history"].gather(users)
    feed = {"user_id": users.reshape(-1, 1), "user_history": pad_lists(histories, data.history_len).numpy()}
    session = ort.InferenceSession(str(bundle.path("user_tower.onnx")), providers=["CPUExecutionProvider"])
    vectors = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]

    expected = _recall_at_20(vectors, items, test, known)
    mlflow.set_tracking_uri(Settings.from_env().tracking_uri)
    logged = MlflowClient().get_run(result.run_id).data.metrics
    assert logged["test_recall_at_20"] == pytest.approx(expected, abs=1e-6)
    assert result.metrics["recall@20"] == pytest.approx(expected, abs=1e-6)
    # queries are unit vectors over the temperature: the exported user tower scores by cosine
    temperature = float(bundle.manifest.scoring["temperature"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1) * temperature, 1.0, rtol=1e-5)
