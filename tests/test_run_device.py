"""Device and weight dtype of `romer run` (eval.device, eval.weights_dtype): validated up front, honoured by the
evaluator."""

import pytest
import torch

from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.experiment.evaluate import Evaluator


def test_an_unknown_or_absent_device_is_refused_when_the_config_is_read():
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        load_config("default", ["eval.device=tpu"])
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            load_config("default", ["eval.device=cuda:0"])
    with pytest.raises(UserError, match="weights_dtype"):
        load_config("default", ["eval.weights_dtype=int8"])


def test_the_evaluator_loads_the_model_in_the_configured_weight_dtype():
    config = load_config("default", ["models=[olmoe-tiny]", "chip.chips=1", "methods=[clean, noisy]",
                                     "eval.max_tokens=256", "eval.window=128", "eval.weights_dtype=bfloat16",
                                     "calibration.sequences=2", "calibration.window=128"])
    evaluator = Evaluator()
    (group,) = config.groups()
    rows = {row["method"]: row for row in evaluator(group)}
    model, _ = evaluator.model("olmoe-tiny")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert rows["clean"]["ppl"] < rows["noisy"]["ppl"] < 10 * rows["clean"]["ppl"]
