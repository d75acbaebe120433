"""The results schema: parameter types, fixed columns, version metadata."""

import json

import numpy as np
import pyarrow as pa
import pytest

from raykd.results import (
    SCHEMA_VERSION,
    TableWriter,
    arrow_type_for,
    epochs_schema,
    load_table,
    runs_schema,
    trials_schema,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, False], pa.bool_()),
        ([0, 1, 2], pa.int64()),
        ([np.int64(3), 4], pa.int64()),
        ([1.0e-6, 1.0e-4], pa.float64()),
        ([1, 0.5], pa.float64()),
        (["mgd", "dmkd", "samkd"], pa.string()),
        ([[1], [1, 2], [1, 2, 4]], pa.list_(pa.int64())),
        ([(1,), (1, 2)], pa.list_(pa.int64())),
        ([[0.5], [1, 2]], pa.list_(pa.float64())),
        ([None, "gate"], pa.string()),
        ([None], pa.null()),
    ],
)
def test_arrow_type_for(values, expected):
    assert arrow_type_for(values) == expected


@pytest.mark.parametrize("values", [[1, "auto"], [[1], 2], [{"a": 1}]])
def test_arrow_type_for_rejects_mixed_or_unknown(values):
    with pytest.raises(ValueError):
        arrow_type_for(values)


def test_trials_schema_types_params_and_metadata():
    params = {
        "distill.method": pa.string(),
        "distill.mask_ratio": pa.float64(),
        "distill.pyramid_scales": pa.list_(pa.int64()),
        "train.seed": pa.int64(),
    }
    schema = trials_schema(params)
    for name, pa_type in params.items():
        assert schema.field(name).type == pa_type
    names = schema.names
    assert names.index("error") < names.index("distill.method") < names.index("final_bbox_mAP")
    for column in ("final_AP_L", "best_AP50", "best_epoch", "loss_terms", "device_hours", "seq", "updated_at"):
        assert column in names
    assert schema.field("loss_terms").type == pa.map_(pa.string(), pa.float64())
    meta = schema.metadata
    assert meta[b"raykd.schema_version"] == str(SCHEMA_VERSION).encode()
    assert meta[b"raykd.table"] == b"trials"
    assert json.loads(meta[b"raykd.params"]) == list(params)


def test_trials_schema_rejects_param_named_like_a_column():
    with pytest.raises(ValueError, match="seed"):
        trials_schema({"seed": pa.int64()})


def test_epochs_and_runs_schemas_carry_version():
    for schema, table in ((epochs_schema(), b"epochs"), (runs_schema(), b"runs")):
        assert schema.metadata[b"raykd.table"] == table
        assert schema.metadata[b"raykd.schema_version"] == str(SCHEMA_VERSION).encode()
    assert "bbox_mAP" in epochs_schema().names and "distill.method" not in epochs_schema().names
    assert runs_schema().field("cuda_devices").type == pa.list_(pa.string())


def test_written_params_keep_types_conditionals_null_and_lists_as_lists(tmp_path):
    params = {
        "distill.method": arrow_type_for(["mgd", "samkd"]),
        "distill.mask_ratio": arrow_type_for([0.3, 0.9]),
        "distill.pyramid_scales": arrow_type_for([[1], [1, 2], [1, 2, 4]]),
        "distill.use_gate": arrow_type_for([True, False]),
        "train.seed": arrow_type_for([0, 1, 2]),
    }
    writer = TableWriter(tmp_path, "exp", params)
    configs = {
        "a": {"distill.method": "samkd", "distill.mask_ratio": 0.5, "distill.pyramid_scales": [1, 2, 4],
              "distill.use_gate": True, "train.seed": 2},
        "b": {"distill.method": "samkd", "distill.mask_ratio": 0.7, "distill.pyramid_scales": [1],
              "distill.use_gate": False, "train.seed": 0},
        "c": {"distill.method": "mgd", "distill.mask_ratio": 0.6, "train.seed": 1},
    }
    for trial_id, config in configs.items():
        writer.add_result(trial_id, config, {"epoch": 1, "epochs_total": 1, "bbox_mAP": 0.1})
        writer.end_trial(trial_id)
    writer.flush()
    table = load_table(tmp_path)
    for name, pa_type in params.items():
        assert table.schema.field(name).type == pa_type
    rows = {row["trial_id"]: row for row in table.to_pylist()}
    assert rows["a"]["distill.pyramid_scales"] == [1, 2, 4]
    assert rows["b"]["distill.pyramid_scales"] == [1]
    assert rows["c"]["distill.pyramid_scales"] is None
    assert rows["c"]["distill.use_gate"] is None
    assert rows["a"]["distill.use_gate"] is True and rows["b"]["distill.use_gate"] is False
    assert rows["a"]["train.seed"] == 2 and rows["a"]["seed"] == 2
    assert rows["b"]["distill.mask_ratio"] == 0.7


def test_config_value_that_does_not_fit_its_column_names_the_key(tmp_path):
    writer = TableWriter(tmp_path, "exp", {"train.seed": pa.int64()})
    with pytest.raises(ValueError, match="train.seed"):
        writer.add_result("t", {"train.seed": 0.5}, {"epoch": 1})


def test_importing_results_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, raykd.results as r; assert 'ray' not in sys.modules; "
            "r.ParquetResultsCallback; assert 'ray' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
