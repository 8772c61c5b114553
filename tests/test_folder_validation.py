"""A model folder whose config.json does not match its weights is refused in one line (it used to load with random
or dropped layers and score a PPL with exit 0)."""

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from romer.cli.main import app
from romer.models import resolve_model_dir


@pytest.mark.parametrize("layers, message", [(8, "asks for .* tensor\\(s\\) the weights lack"),
                                             (2, "the weights hold .* tensor\\(s\\) config.json does not use")])
def test_a_config_of_another_depth_is_refused(tmp_path, layers, message):
    folder = tmp_path / "edited"
    shutil.copytree(resolve_model_dir("olmoe-tiny"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["eval", "--model", str(folder), "--max-tokens", "200"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0])
