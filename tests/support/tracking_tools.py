"""Reading trackers back with their own readers: TensorBoard's event accumulator, MLflow's
client, W&B's protobuf records (shared by tests/tracking/test_backends.py and the fault suite)."""

from __future__ import annotations

from pathlib import Path


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every value of ``tag`` in the event files of ``run``, duplicates kept."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def tensorboard_hparams(run: Path) -> dict:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = ea.EventAccumulator(str(run))
    acc.Reload()
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}


def mlflow_runs(uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment])
    finally:
        mlflow.set_tracking_uri(None)


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def wandb_records(folder: Path, run_id: str) -> list:
    """Every protobuf record of W&B run ``run_id`` in the run folders under ``folder/wandb``
    (one per driver that wrote it), oldest folder first: the LevelDB-style log W&B writes,
    read with its record CRCs checked (W&B's Python package has no reader of its own)."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(Path(folder, "wandb").glob(f"*-{run_id}/run-{run_id}.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B", path
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if (kind, length) == (0, 0):
                pos += 32768 - pos % 32768
                continue
            chunk = data[pos + 7:pos + 7 + length]
            assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, path
            pos += 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(pending)
                out.append(record)
    return out


def wandb_history(folder: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every history value of ``key`` in W&B run ``run_id``, duplicates kept."""
    import json

    return [(r.history.step.num, json.loads(item.value_json)) for r in wandb_records(folder, run_id)
            if r.WhichOneof("record_type") == "history"
            for item in r.history.item if ("/".join(item.nested_key) or item.key) == key]


def wandb_summary(folder: Path, run_id: str) -> dict:
    """The last value of each summary key of W&B run ``run_id``."""
    import json

    summary: dict = {}
    for record in wandb_records(folder, run_id):
        if record.WhichOneof("record_type") == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
    return summary


def wandb_config(folder: Path, run_id: str) -> dict:
    """The config W&B recorded for run ``run_id`` (its values, as logged)."""
    import json

    config: dict = {}
    for record in wandb_records(folder, run_id):
        kind = record.WhichOneof("record_type")
        items = record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        config.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
    return {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items() if not k.startswith("_")}
