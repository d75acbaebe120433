"""Canaries: each assumption about Ray Tune's and Optuna's internals that
:mod:`raykd.search.tune_state` lists (A1-A6), checked against the installed versions. A Ray or
Optuna upgrade that breaks one fails here, by name, before it silently breaks resume."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
import pyarrow.fs as pafs
import pytest
from optuna.distributions import FloatDistribution
from ray import tune
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from raykd.search.tune_state import (
    FINISHED,
    STATE_FILES,
    ResumableOptunaSearch,
    ShrinkFinishedCheckpoints,
    can_restore,
    has_state,
    is_whole,
    resume_state_of,
    sessions,
)
from raykd.train.checkpoint import STATE_FILE, load_state, save_state

pytestmark = pytest.mark.ray


class _SeeTrial(tune.Callback):
    """Keeps what a callback sees of the ended trial's storage; has a state to save, as the
    results writer does."""

    def __init__(self):
        self.seen: dict = {}

    def get_state(self) -> dict:
        return {"seen": bool(self.seen)}

    def set_state(self, state: dict) -> None:
        pass

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.seen = {"fs": trial.storage.storage_filesystem, "folder": trial.storage.trial_fs_path}


@pytest.fixture(scope="module")
def finished_run(ray_local, tmp_path_factory):
    """One real Tune run of one trial with two checkpoints, as a search runs it (an Optuna
    searcher, num_to_keep=2, the finished-checkpoint shrinker on)."""
    def two_checkpoints(config):  # nested, so Ray's workers get it by value (tests/ is no package)
        for step in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                save_state({"step": step}, Path(folder) / STATE_FILE)
                tune.report({"score": float(step)}, checkpoint=tune.Checkpoint.from_directory(folder))

    storage = tmp_path_factory.mktemp("canary")
    seer = _SeeTrial()
    tuner = tune.Tuner(
        two_checkpoints,
        tune_config=tune.TuneConfig(num_samples=1, search_alg=_searcher(ResumableOptunaSearch)),
        run_config=tune.RunConfig(name="canary", storage_path=str(storage), verbose=0,
                                  callbacks=[ShrinkFinishedCheckpoints(), seer],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    grid = tuner.fit()
    assert not grid.errors
    return storage / "canary", seer.seen, grid[0]


def test_state_files_are_named_as_assumed(finished_run, tmp_path):
    """A1: one set of four state files per driver session beside tuner.pkl, each readable to its
    end; A2: Tuner.can_restore tells a saved search from a folder without one."""
    root, _, _ = finished_run
    found = sessions(root)
    assert len(found) == 1, sorted(p.name for p in root.iterdir())
    for pattern in STATE_FILES:
        path = root / pattern.format(found[0])
        assert path.is_file(), f"Tune no longer writes {pattern} (found: {sorted(p.name for p in root.iterdir())})"
        assert is_whole(path)
    assert (root / f"search_gen_state-{found[0]}.json").read_bytes().startswith(b"\x80")  # a pickle
    assert has_state(root)
    assert can_restore(root, local=True)
    assert not tune.Tuner.can_restore(str(tmp_path))
    assert not can_restore(tmp_path, local=True)


def test_trial_checkpoints_are_where_assumed(finished_run):
    """A3: checkpoint_NNNNNN folders in the trial folder that callbacks see, sorting by name;
    A4: the ended trial's checkpoints are kept, each now a "finished" marker."""
    _, seen, result = finished_run
    assert isinstance(seen["fs"], pafs.LocalFileSystem)
    folder = Path(seen["folder"])
    assert folder == Path(result.path)
    names = sorted(p.name for p in folder.glob("checkpoint_*"))
    assert names == ["checkpoint_000000", "checkpoint_000001"]
    for name in names:
        assert load_state(folder / name / STATE_FILE) == {FINISHED: True}
    checkpoint = result.checkpoint
    assert Path(checkpoint.path) == folder / "checkpoint_000001"
    assert isinstance(checkpoint.filesystem, pafs.LocalFileSystem)


def test_resume_takes_the_newest_readable_checkpoint(tmp_path):
    """A3: the checkpoint Tune names may be stale or torn; the newest readable folder wins."""
    trial = tmp_path / "trial"
    for index, step in ((0, 1), (1, 2)):
        save_state({"step": step}, trial / f"checkpoint_{index:06d}" / STATE_FILE)
    (trial / "checkpoint_000002").mkdir()
    (trial / "checkpoint_000002" / STATE_FILE).write_bytes(b"torn")
    named = tune.Checkpoint.from_directory(str(trial / "checkpoint_000000"))  # stale
    assert resume_state_of(named) == {"step": 2}
    assert resume_state_of(None) is None


def _searcher(cls):
    return cls(space={"x": FloatDistribution(0.0, 1.0)}, metric="score", mode="max",
               sampler=optuna.samplers.RandomSampler(seed=0))


def test_optuna_search_closed_trial():
    """A5: Optuna refuses a result for a trial its storage already closed (a resumed trial
    re-reports its last epochs after the journal recorded its end); ResumableOptunaSearch
    takes it and marks the trial completed, so later results are ignored."""
    plain = _searcher(OptunaSearch)
    plain.suggest("t1")
    assert isinstance(plain._completed_trials, set)
    plain._ot_study.tell(plain._ot_trials["t1"], 1.0)  # the journal of a later session closed it
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        plain.on_trial_result("t1", {"score": 1.0, "training_iteration": 2})

    resumable = _searcher(ResumableOptunaSearch)
    resumable.suggest("t1")
    resumable._ot_study.tell(resumable._ot_trials["t1"], 1.0)
    resumable.on_trial_result("t1", {"score": 1.0, "training_iteration": 2})
    assert "t1" in resumable._completed_trials
    resumable.on_trial_result("t1", {"score": 1.0, "training_iteration": 3})  # ignored, no error
    assert resumable._ot_study.trials[0].value == 1.0


def test_repeater_sets_trial_index():
    """A6: each repeat of a configuration carries __trial_index__ 0, 1, ... (the trainable
    shifts the seed by it)."""
    repeater = Repeater(_searcher(OptunaSearch), repeat=3)
    configs = [repeater.suggest(f"t{i}") for i in range(3)]
    assert [c["__trial_index__"] for c in configs] == [0, 1, 2]
    assert len({c["x"] for c in configs}) == 1
