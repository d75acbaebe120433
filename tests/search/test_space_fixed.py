"""`fixed:` in a space file: nested mappings are dotted keys, and --set overrides a fixed key
for the trials too (they receive fixed values as constants)."""

from __future__ import annotations

import yaml

from raykd.search.space import Space


def _space(tmp_path, experiment, fixed):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"experiment": str(experiment), "space": {"train.seed": [0, 1]},
                                    "fixed": fixed}))
    return path


def test_nested_fixed_values_become_dotted_keys(write_experiment, tmp_path):
    space = Space(_space(tmp_path, write_experiment(), {"train": {"epochs": 3, "steps_per_epoch": 5}}))
    assert space.settings.fixed == {"train.epochs": 3, "train.steps_per_epoch": 5}
    assert space.base_config.train.epochs == 3 and space.base_config.train.steps_per_epoch == 5
    trial = space.define_by_run()
    assert trial.fixed == {"train.epochs": 3, "train.steps_per_epoch": 5}


def test_set_overrides_a_fixed_key_in_the_trials_too(write_experiment, tmp_path):
    path = _space(tmp_path, write_experiment(), {"train.epochs": 3})
    space = Space(path, {"train.epochs": 1})
    assert space.base_config.train.epochs == 1
    assert space.settings.fixed["train.epochs"] == 1  # what every trial's config carries
    assert Space(path).settings.fixed["train.epochs"] == 3
