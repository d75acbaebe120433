"""One typed description per searched key: from the space file to Optuna,
the trial's experiment, the trials table (list columns, specs in the schema metadata) and
the analysis (log scale from the distribution, not from the values seen)."""

from __future__ import annotations

import optuna
import pandas as pd
import pyarrow as pa
import yaml

from raykd.analyze.factors import describe
from raykd.analyze.importance import _distribution
from raykd.config import apply_overrides
from raykd.results import ParamSpec, TableWriter, arrow_type_for, load_table, param_specs
from raykd.results.writer import _coerce
from raykd.search.space import Space
from raykd.search.trainable import trial_overrides
from raykd.search.tuner import param_types

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(write_experiment, tiny_teacher, tmp_path) -> Space:
    raw = {"experiment": str(write_experiment(teacher=tiny_teacher)), "metric": "bbox_mAP", "mode": "max",
           "space": {"distill.method": {"choice": ["mgd", "samkd"]},
                     "distill.alpha": {"loguniform": [1e-6, 1e-5]},
                     "distill.mask_ratio": {"uniform": [0.3, 0.9]},
                     "distill.pyramid_scales": {"choice": [[1], [1, 2], [1, 2, 4]],
                                                "when": {"distill.method": "samkd"}}},
           "points_to_evaluate": [{"distill.method": "samkd", "distill.pyramid_scales": [1, 2, 4]}]}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return Space(path)


def test_searched_list_reaches_the_distiller_and_the_table_as_a_list(write_experiment, tiny_teacher, tmp_path):
    space = _space(write_experiment, tiny_teacher, tmp_path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(space.points[0])  # as OptunaSearch enqueues points_to_evaluate
    fn = space.define_by_run()
    configs = []
    for _ in range(12):
        trial = study.ask()
        returned = fn(trial) or {}
        configs.append({**trial.params, **returned})  # how Ray's OptunaSearch builds the config
        study.tell(trial, 0.0)
    assert configs[0]["distill.pyramid_scales"] == [1, 2, 4]
    samkd = [c for c in configs if c["distill.method"] == "samkd"]
    assert samkd and all(isinstance(c["distill.pyramid_scales"], list) for c in samkd)
    cfg = apply_overrides(space.base, trial_overrides(configs[0], space.base, threads=None))
    assert cfg.distill.pyramid_scales == [1, 2, 4]

    writer = TableWriter(tmp_path / "tables", "exp", param_types(space), specs=space.params)
    for i, config in enumerate(configs):
        writer.add_result(f"t{i}", config, {"epoch": 1, "epochs_total": 1, "bbox_mAP": 0.1})
        writer.end_trial(f"t{i}")
    writer.flush()
    table = load_table(tmp_path / "tables")
    assert table.schema.field("distill.pyramid_scales").type == pa.list_(pa.int64())
    assert table.to_pylist()[0]["distill.pyramid_scales"] == [1, 2, 4]
    # The stored description round-trips from the table's metadata, also after compaction.
    assert param_specs(table.schema) == space.params
    writer.compact()
    assert param_specs(load_table(tmp_path / "tables").schema) == space.params


def test_a_list_column_takes_lists_only():
    try:
        _coerce("distill.pyramid_scales", "1,2,4", pa.list_(pa.int64()))
    except ValueError as err:
        assert "does not fit" in str(err)
    else:
        raise AssertionError("a '1,2,4' string was accepted for a list column")


def test_spec_round_trips_with_list_choices_and_conditions():
    spec = ParamSpec("distill.pyramid_scales", "choice", choices=((1,), (1, 2)),
                     when=(("distill.method", ("samkd",)),))
    assert ParamSpec.from_dict(spec.to_dict()) == spec
    assert spec.decode(spec.encode([1, 2])) == [1, 2]
    assert spec.active({"distill.method": "samkd"}) and not spec.active({"distill.method": "mgd"})
    assert arrow_type_for(spec.candidates()) == pa.list_(pa.int64())


def _frame(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"x": values, "value": range(len(values))})


def test_log_scale_comes_from_the_distribution_not_the_span():
    narrow = [1e-3 * (1 + i / 3) for i in range(10)]  # spans 4x
    wide = [0.01 + i * 0.11 for i in range(10)]  # spans about 100x
    log_spec = {"x": ParamSpec("x", "loguniform", low=1e-3, high=1e-1)}
    lin_spec = {"x": ParamSpec("x", "uniform", low=0.0, high=1.0)}
    assert describe(_frame(narrow), ["x"], log_spec)[0].log is True
    assert describe(_frame(wide), ["x"], lin_spec)[0].log is False
    assert _distribution(narrow, log_spec["x"])[0] == optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    assert _distribution(wide, lin_spec["x"])[0] == optuna.distributions.FloatDistribution(0.0, 1.0)
    int_spec = ParamSpec("x", "int", low=1, high=512, log=True)
    assert _distribution([2, 4, 8], int_spec)[0] == optuna.distributions.IntDistribution(1, 512, log=True)


def test_old_tables_without_specs_still_infer_the_scale(tmp_path):
    writer = TableWriter(tmp_path, "exp", {"train.lr": pa.float64()})  # no specs: as before they were stored
    for i, lr in enumerate([1e-4, 1e-3, 1e-2, 3e-2, 5e-2, 1e-1, 2e-1]):
        writer.add_result(f"t{i}", {"train.lr": lr}, {"epoch": 1, "epochs_total": 1, "bbox_mAP": 0.1})
        writer.end_trial(f"t{i}")
    writer.flush()
    table = load_table(tmp_path)
    specs = param_specs(table.schema)
    assert specs == {}
    frame = table.to_pandas()
    assert describe(frame, ["train.lr"], specs)[0].log is True  # spans 2000x: inferred log
    assert _distribution(frame["train.lr"].tolist())[0].log is True
