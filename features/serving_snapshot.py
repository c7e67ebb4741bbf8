"""The serving snapshot: the features ``rankforge materialize`` writes for the live service.

Offline evaluation scores the test set from the *training part* of the log (what a model was
trained and validated on). A live service runs after the *last* event: a member who joined after
a time split's cut still has to be served, and what a member clicked yesterday must not be
recommended again today. So by default ``materialize`` writes, for every user with an event
anywhere in the log (the held-out part included) and every item of the log or the item table:

* the latest history, the aggregates and the **seen items** (every item of the user's events,
  whatever their label: the rule offline evaluation masks with, ``PreparedData.known_events``)
  over all of the log's events;
* the declared features encoded with the vocabularies of the training part, the ones the models
  were trained with, so the feature version matches their vocabulary digests (a value that only
  appears after the cut is dropped, as the model never learned it).

A user or item the served bundle never saw is then served as a cold start: the padding
embedding plus whatever history and features it has. ``materialize --as-evaluated`` writes the
training part instead (``prepare``'s tables): the state the offline metrics were computed from,
for checking that the service answers what was evaluated.
"""

from __future__ import annotations

import polars as pl

from rankforge.errors import DataError
from rankforge.features import history as hist
from rankforge.features.aggregates import item_aggregates, user_aggregates
from rankforge.features.id_mapping import IdMapping
from rankforge.features.pipeline import (
    ORDER,
    DataConfig,
    PreparedData,
    encode_events,
    feature_tables,
    prepare,
    provided_validation,
    raw_log,
    side_tables,
)
from rankforge.features.schema import LABEL, USER_IDX


def serving_snapshot(config: DataConfig) -> PreparedData:
    """``config``'s whole log featurised for serving (see the module docstring). The result's
    ``train_events`` are every event of the log and it holds no held-out events or examples."""
    if config.source == "prepared":
        raise DataError(
            "a prepared directory holds the training part only: materialize it with --as-evaluated, "
            "or give the data config of the log itself"
        )
    training = prepare(config)  # the vocabularies and request-context normalisation trained on
    log, provided_test, items = raw_log(config)
    items, users_table = side_tables(config, items)
    parts = [p for p in (log, provided_test, provided_validation(config)) if p is not None]
    everything = pl.concat(parts, how="vertical_relaxed")
    mapping = IdMapping.fit(everything, items)
    context = training.inputs.context
    events = encode_events(
        everything.lazy(), mapping, config.label_threshold, context, config.features
    ).collect()
    if events.filter(pl.col(LABEL) > 0).height == 0:
        raise DataError(f"no positive events (label value >= {config.label_threshold})")
    lazy = events.lazy()
    tables = feature_tables(
        config,
        mapping,
        users_table,
        items,
        user_aggregates(lazy).join(hist.latest_history(lazy, config.history_len), on=USER_IDX, how="left"),
        item_aggregates(lazy, mapping.n_items),
        context,
        vocabularies=training.vocabularies,
    )
    empty = events.clear()
    return PreparedData(
        mapping=mapping,
        inputs=tables.layout,
        vocabularies=training.vocabularies,
        train_events=events.sort(ORDER),
        test_events=empty,
        retrieval_examples=training.retrieval_examples.clear(),
        ranking_examples=training.ranking_examples.clear(),
        user_features=tables.users,
        item_features=tables.items,
        history_len=config.history_len,
        training_history=config.training_history,
        source=config.describe() + " (serving snapshot: the whole log)",
        config=config,
    )
