"""Experiment configs: bundled YAML, overrides, one-line validation errors (exit 2 from the CLI), groups, hashes."""

import pickle

import pytest
import typer
from typer.testing import CliRunner

from romer.calibrate.config import ablation_methods, default_methods
from romer.cli.run import report_command, run_command
from romer.errors import UserError
from romer.experiment.config import ExperimentConfig, TrialGroup
from romer.experiment.config_file import load_config

app = typer.Typer()
app.command("run")(run_command)
app.command("report")(report_command)
cli = CliRunner(env={"COLUMNS": "200"})


def test_bundled_full_is_the_main_job():
    config = load_config("full")
    assert config.models == ["olmoe-tiny", "qwenmoe-tiny", "deepseekmoe-tiny"]
    assert [m.name for m in config.methods] == [m.name for m in default_methods()]
    assert config.chip.chips == 5 and config.chip.t_inference == [86400.0] and config.chip.placements == ["moe"]
    assert config.eval.max_tokens == 16384 and config.eval.split == "test" and config.calibration.sequences == 32
    group = config.groups()[0]
    assert group.chip["preset"]["prog_noise_scale"] == 10.0 and group.preset == "pcm×10"
    assert len(config.groups()) == 15 and config.trial_count() == 15 * len(default_methods())
    assert [m.name for m in load_config("ablations").methods] == [m.name for m in ablation_methods()]


def test_bundled_default_is_the_first_look_on_the_main_jobs_chip():
    """`romer run` / `make demo`: the full job's chip, chips and calibration, on the two models where ROMER helps,
    with ROMER, its recalibration step and the rows they are read against, on a quarter of the tokens."""
    config, full = load_config("default"), load_config("full")
    assert config.models == ["olmoe-tiny", "qwenmoe-tiny"]
    assert [m.name for m in config.methods] == ["clean", "noisy", "oracle routing", "recalibration", "romer"]
    assert {m.name: m for m in config.methods}["romer"] == {m.name: m for m in full.methods}["romer"]
    assert config.chip == full.chip and config.calibration == full.calibration
    assert config.eval.max_tokens == 4096 == full.eval.max_tokens // 4
    assert config.eval.model_copy(update={"max_tokens": 16384}) == full.eval
    assert config.trial_count() == 2 * 5 * 5


def test_the_yaml_defaults_equal_the_model_defaults():
    """full.yaml spells out the defaults; only its name differs from ExperimentConfig()."""
    assert load_config("full", ["name=experiment"]).config_hash == ExperimentConfig().config_hash


def test_overrides_are_yaml_values_on_dotted_keys():
    config = load_config("default", ["chip.chips=2", "models=[olmoe-tiny]", "eval.max_tokens=null",
                                     "chip.t_inference=[1, 3600]", "methods=[clean, noisy, romer]",
                                     "chip.presets.0.overrides.prog_noise_scale=3"])
    assert config.chip.chips == 2 and config.models == ["olmoe-tiny"] and config.eval.max_tokens is None
    groups = config.groups()
    assert [(g.chip["t_inference"], g.chip["seed"]) for g in groups] == [(1.0, 0), (1.0, 1), (3600.0, 0), (3600.0, 1)]
    assert groups[0].chip["preset"]["prog_noise_scale"] == 3.0 and groups[0].method_names == ["clean", "noisy", "romer"]


@pytest.mark.parametrize("overrides, message", [
    (["chip.chips=0"], "config default.yaml: chip.chips: must be ≥ 1 (got 0)"),
    (["eval.foo=1"], "config default.yaml: unknown key 'foo' in eval"),
    (["bogus=1"], "config default.yaml: unknown key 'bogus'"),
    (["eval.window=wide"], "config default.yaml: eval.window: must be a valid integer"),
    (["eval.split=dev"], "config default.yaml: eval: dataset 'bundled' has no split 'dev'; choose one of train, validation, test"),
    (["methods=[clean, magic]"], "config default.yaml: methods: unknown method 'magic'"),
    (["methods=[clean, clean]"], "config default.yaml: methods: method name 'clean' appears twice"),
    (["methods=[{name: x, kind: noisy, bogus: 1}]"], "config default.yaml: unknown key 'bogus' in methods[0]"),
    (["chip.presets=[nope]"], "config default.yaml: chip.presets[0]: unknown noise preset 'nope'"),
    (["chip.placements=[moe, nowhere]"], "config default.yaml: chip.placements: bad placement 'nowhere'"),
    (["models=[]"], "config default.yaml: models: must not be empty"),
    (["calibration.sequences=0"], "config default.yaml: calibration.sequences: must be ≥ 1 (got 0)"),
])
def test_validation_errors_are_one_clear_line(overrides, message):
    with pytest.raises(UserError) as caught:
        load_config("default", overrides)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text


def test_bad_files_and_overrides_are_user_errors(tmp_path):
    (tmp_path / "broken.yaml").write_text("models: [a\n")
    (tmp_path / "list.yaml").write_text("- a\n")
    for source, overrides, message in [(tmp_path / "missing.yaml", [], "no config"),
                                       (tmp_path / "broken.yaml", [], "is not valid YAML"),
                                       (tmp_path / "list.yaml", [], "expected a mapping"),
                                       ("default", ["chips"], "--set takes"),
                                       ("default", ["models.x=1"], "is a list")]:
        with pytest.raises(UserError, match=message):
            load_config(source, overrides)


def test_cli_config_error_is_one_line_and_exit_2():
    result = cli.invoke(app, ["run", "--set", "chip.chips=0"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: config default.yaml: chip.chips: must be ≥ 1 (got 0)"
    result = cli.invoke(app, ["run", "default", "--set", "eval.foo=1"])
    assert result.exit_code == 2 and result.output.strip() == "error: config default.yaml: unknown key 'foo' in eval"


def test_hash_is_stable_and_ignores_labels_and_run_options(tmp_path):
    base = load_config("default")
    assert base.config_hash == load_config("default").config_hash and len(base.config_hash) == 64
    assert base.config_hash == load_config("default", ["name=other", "run.workers=7", "run.out=x"]).config_hash
    assert base.config_hash != load_config("default", ["chip.chips=4"]).config_hash
    assert base.config_hash != load_config("default", ["eval.window=256"]).config_hash


def test_trial_keys_are_unique_and_groups_pickle():
    config = load_config("default", ["chip.t_inference=[1, 86400]", "chip.placements=[moe, experts]"])
    keys = [k for g in config.groups() for k in g.trial_keys().values()]
    assert len(keys) == len(set(keys)) == config.trial_count()
    group = config.groups()[3]
    again = pickle.loads(pickle.dumps(group))
    assert isinstance(again, TrialGroup) and again == group and again.trial_keys() == group.trial_keys()


def test_experiment_calibration_fills_what_a_method_does_not_set():
    config = load_config("ablations", ["calibration.window=256", "calibration.sequences=32"])
    by_name = {m.name: m.calibration for m in config.methods}
    assert by_name["romer"].window == 256 and by_name["romer"].sequences == 32
    assert by_name["P1 (1, 99), 8 calibration windows"].sequences == 8  # the method's own setting wins
    assert by_name["P1 (1, 99), 8 calibration windows"].window == 256


@pytest.mark.parametrize("overrides, message", [
    (["chip.chips=1e9"], "chips"), (["chip.chips=1000000000"], "must be ≤ 10000"),
    (["chip.seed=9223372036854775808"], "seed"),
])
def test_chip_counts_and_seeds_beyond_their_limits_are_refused_before_any_work(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config("default", overrides)


def test_an_empty_config_file_is_an_error_not_the_default_run(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with pytest.raises(UserError, match="empty.yaml is empty"):
        load_config(str(path))
