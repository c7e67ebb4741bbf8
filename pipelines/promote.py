"""Registry promotion: the challenger becomes ``champion`` only when it is better beyond doubt.

Rule: for every configured criterion, the paired-bootstrap interval of challenger − champion must
lie entirely on the better side of zero (low > 0 for higher-is-better metrics, high < 0 for
lower-is-better ones such as logloss). A tie or an interval straddling zero keeps the champion.
And the challenger must beat the trivial floor on the same rows (most popular unseen items for
retrieval, each item's positive rate for a ranker) on every criterion the floor has: a model no
better than popularity is refused even against a weaker champion, unless the operator says
``allow_below_floor`` (``--allow-below-floor``), which is tagged on the version.
On promotion the old champion gets the ``previous-champion`` alias, so it stays reachable for a
rollback; no version is ever deleted. The decision and its reasons are logged to the comparison's
MLflow run and tagged on the challenger's model version.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rankforge.bundles.bundle import load_bundle
from rankforge.bundles.registry import DATA_TAG, ID_MAPPING_TAG, RegisteredModel, log_and_register, resolve
from rankforge.errors import ConfigError
from rankforge.features.pipeline import DataConfig, prepare
from rankforge.pipelines.ab_compare import ABConfig, ABReport, run_ab_comparison
from rankforge.pipelines.replay_log import build_replay_log, read_replay_log

CHAMPION = "champion"
#: Tagged on a version promoted although it does not beat the floor (the operator's override).
BELOW_FLOOR_TAG = "promotion.below_floor"
PREVIOUS = "previous-champion"
LOWER_IS_BETTER = frozenset({"logloss", "ece"})


@dataclass(frozen=True)
class Criterion:
    metric: str
    higher_is_better: bool = True

    @classmethod
    def parse(cls, text: str) -> Criterion:
        """``metric`` or ``metric:higher``/``metric:lower``; without a direction, logloss and ECE
        are lower-is-better and everything else higher-is-better."""
        metric, _, direction = text.strip().partition(":")
        if not metric:
            raise ConfigError(f"promotion criterion names no metric: {text!r}")
        if direction not in ("", "higher", "lower"):
            raise ConfigError(f"criterion {text!r}: direction must be 'higher' or 'lower', not {direction!r}")
        higher = metric not in LOWER_IS_BETTER if not direction else direction == "higher"
        return cls(metric, higher_is_better=higher)


DEFAULT_CRITERIA: dict[str, tuple[Criterion, ...]] = {
    "retrieval": (Criterion("recall@20"), Criterion("ndcg@20")),
    "ranker": (Criterion("auc"), Criterion("logloss", higher_is_better=False)),
}


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    champion_version: int | None = None
    challenger_version: int | None = None
    report_run_id: str | None = None
    applied: bool = False  # False on a dry run or when nothing changed
    details: dict = field(default_factory=dict)


def floor_check(report: ABReport, criteria: tuple[Criterion, ...]) -> list[str]:
    """One line per criterion on which the challenger does not beat the report's floor (its point
    estimate on the same rows); criteria the floor has no value for are not checked."""
    if report.floor is None:
        return []
    below = []
    for c in criteria:
        if c.metric not in report.over_floor:
            continue
        d = report.over_floor[c.metric]
        if not (d.estimate > 0 if c.higher_is_better else d.estimate < 0):
            floor, mine = report.floor.metrics[c.metric], report.challenger.metrics[c.metric]
            below.append(
                f"{c.metric}: challenger {mine:.4f} does not beat the floor {floor:.4f} "
                f"({report.floor.label}; delta {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}])"
            )
    return below


def decide(report: ABReport, criteria: tuple[Criterion, ...], allow_below_floor: bool = False) -> Decision:
    """Apply the promotion rule to a comparison report."""
    if not criteria:
        raise ConfigError("promotion needs at least one criterion")
    reasons, passed = [], []
    for c in criteria:
        if c.metric not in report.deltas:
            raise ConfigError(
                f"criterion {c.metric!r} is not a metric of this comparison: {sorted(report.deltas)}"
            )
        d = report.deltas[c.metric]
        ok = d.low > 0 if c.higher_is_better else d.high < 0
        passed.append(ok)
        better = "higher" if c.higher_is_better else "lower"
        verdict = "improves beyond its interval" if ok else "does not improve beyond its interval"
        before, after = report.champion.metrics[c.metric], report.challenger.metrics[c.metric]
        reasons.append(
            f"{c.metric} ({better} is better) {verdict}: {before:.4f} -> {after:.4f}, "
            f"delta {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        )
    notes = report.champion.notes
    if "evaluated_users" in notes:
        paired = f"{notes['evaluated_users']:,} of {notes.get('held_out_users', 0):,} held-out users"
    else:
        paired = (
            f"{notes.get('evaluated_events', 0):,} of {notes.get('held_out_events', 0):,} held-out events"
        )
    below = floor_check(report, criteria)
    details = {"paired": f"both scored on the same {paired}"}
    if below and allow_below_floor:
        reasons += [f"below the floor, overridden (--allow-below-floor): {line}" for line in below]
        details["below_floor"] = "; ".join(below)
    elif below:
        reasons += [f"refused: {line}" for line in below]
        passed.append(False)
    return Decision(promote=all(passed), reasons=reasons, details=details)


def _find(name: str, ref: str | int) -> RegisteredModel | None:
    try:
        return resolve(name, ref)
    except ConfigError:
        return None


def latest_version(name: str) -> int:
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    if not versions:
        raise ConfigError(f"registered model {name!r} has no versions")
    return max(int(v.version) for v in versions)


def _challenger(name: str, challenger: str | int, register: bool) -> tuple[RegisteredModel | None, str]:
    """The challenger's registered version (None for an unregistered directory) and its URI."""
    if isinstance(challenger, str) and Path(challenger).is_dir():
        bundle = load_bundle(challenger)  # a bad directory fails here, before anything is registered
        if not register:
            return None, str(bundle.directory)
        with mlflow.start_run(run_name=f"register {bundle.directory}"):
            mlflow.set_tags({"rankforge.job": "promote", "bundle_dir": str(bundle.directory)})
            new = log_and_register(bundle.directory, name)
        return new, new.model_uri
    ref = latest_version(name) if challenger == "latest" else challenger
    found = _find(name, ref)
    if found is None:
        raise ConfigError(f"no registered model {name!r} at {ref!r} (and no bundle directory of that name)")
    return found, found.model_uri


def _trained_on(name: str, version: int | None, uri: str) -> dict[str, str]:
    """The data fingerprint a model was trained on (version tags, or a bundle directory's
    manifest); empty for models registered before fingerprints existed."""
    if version is None:
        return dict(load_bundle(uri).manifest.data_fingerprint)
    tags = MlflowClient().get_model_version(name, str(version)).tags
    if ID_MAPPING_TAG not in tags:
        return {}
    return {"source": tags.get(DATA_TAG, ""), "id_mapping": tags[ID_MAPPING_TAG]}


def check_same_data(champion: dict[str, str], challenger: dict[str, str], what: str) -> None:
    """Models trained on different data sets (other ids, other rows) are not comparable: refuse."""
    if champion and challenger and champion["id_mapping"] != challenger["id_mapping"]:
        raise ConfigError(
            f"{what}: champion trained on {champion['source']!r} (ids {champion['id_mapping']}), "
            f"challenger on {challenger['source']!r} (ids {challenger['id_mapping']}): different data "
            "sets; compare models of one data set, or pass --allow-different-data"
        )


def promote_if_better(
    name: str,
    challenger: str | int = "latest",
    data_config: DataConfig | None = None,
    criteria: tuple[Criterion, ...] | None = None,
    config: ABConfig | None = None,
    replay_log: str | None = None,
    dry_run: bool = False,
    allow_different_data: bool = False,
    allow_below_floor: bool = False,
) -> Decision:
    """Compare ``name@champion`` with a challenger and move the alias if it wins.

    ``challenger``: a version number, an alias, ``"latest"``, or a bundle directory. A directory is
    registered as a new version first, except on a dry run, which compares it unregistered (so a
    dry run never changes the registry). Needs MLflow configured
    (``rankforge.settings.configure_mlflow``).
    """
    config = config or ABConfig()
    old = _find(name, CHAMPION)
    new, new_uri = _challenger(name, challenger, register=not dry_run)
    new_version = new.version if new is not None else None
    client = MlflowClient()
    if old is None:
        decision = Decision(
            True, [f"{name} has no champion yet: {new_uri} becomes champion"], None, new_version
        )
    elif old.version == new_version:
        return Decision(False, [f"version {new_version} already is the champion"], old.version, new_version)
    else:
        champion_data = _trained_on(name, old.version, old.model_uri)
        challenger_data = _trained_on(name, new_version, new_uri)
        if not allow_different_data:
            check_same_data(champion_data, challenger_data, f"{name} v{old.version} vs {new_uri}")
        data = prepare(data_config or DataConfig())
        log = read_replay_log(replay_log) if replay_log else build_replay_log(data, seed=config.seed)
        report = run_ab_comparison(f"models:/{name}/{old.version}", new_uri, data, log, config)
        used = criteria or DEFAULT_CRITERIA[report.kind]
        decision = decide(report, used, allow_below_floor)
        if champion_data and champion_data["id_mapping"] != data.mapping.digest():
            decision.reasons.append(
                f"note: evaluated on {data.source!r}, not on the champion's training data "
                f"{champion_data['source']!r}"
            )
        decision.champion_version, decision.challenger_version = old.version, new_version
        decision.report_run_id = report.run_id
        decision.details = {
            **decision.details,
            "criteria": [f"{c.metric}:{'higher' if c.higher_is_better else 'lower'}" for c in used],
            "challenger": new_uri,
        }
    if decision.promote and not dry_run:
        assert new is not None  # only a dry run leaves a bundle directory unregistered
        if old is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(old.version))
        client.set_registered_model_alias(name, CHAMPION, str(new.version))
        decision.applied = True
    _record(client, name, decision, dry_run)
    return decision


def _record(client: MlflowClient, name: str, decision: Decision, dry_run: bool) -> None:
    """The decision and its reasons, on the comparison run and on the challenger's version."""
    verdict = ("promote" if decision.promote else "keep champion") + (" (dry run)" if dry_run else "")
    summary = {**asdict(decision), "verdict": verdict}
    if decision.report_run_id is not None:
        with mlflow.start_run(run_id=decision.report_run_id):
            mlflow.set_tags(
                {"promotion.verdict": verdict, "promotion.reasons": " | ".join(decision.reasons)[:5000]}
            )
            mlflow.log_params(
                {
                    "promotion.criteria": ",".join(decision.details.get("criteria", [])),
                    "promotion.dry_run": dry_run,
                    "promotion.applied": decision.applied,
                }
            )
            mlflow.log_dict(summary, "promotion.json")
    if decision.challenger_version is None:  # a dry run of an unregistered bundle: the run has it all
        return
    with contextlib.suppress(MlflowException):  # the version vanished meanwhile: the run keeps the record
        client.set_model_version_tag(name, str(decision.challenger_version), "promotion", verdict)
        if "below_floor" in decision.details:
            overridden = f"overridden by --allow-below-floor: {decision.details['below_floor']}"
            version = str(decision.challenger_version)
            client.set_model_version_tag(name, version, BELOW_FLOOR_TAG, overridden[:5000])
