"""The streaming routing monitor (romer.calibrate.monitor) and the serving loop (romer.calibrate.serving): sketch
accuracy against torch.quantile, refits equal to offline P1, the no-peeking order of score and refit, and
bit-reproducible monitored runs."""

import math

import pytest
import torch

from romer.calibrate import Calibrator, apply, observe
from romer.calibrate.config import MethodConfig
from romer.calibrate.monitor import MonitorConfig, RoutingMonitor, reference_percentiles
from romer.calibrate.plan import Plan
from romer.calibrate.serving import serve_text
from romer.errors import UserError
from romer.eval.perplexity import _score
from romer.models.view import moe_layers
from romer.noise.chip import Chip
from romer.routing import LogitSketch
from tests.tiny_models import VOCAB, tiny

CHIP = Chip.from_options("gaussian", eta=0.3, placement="moe", seed=3)
LEVELS = (1.0, 50.0, 99.0)


def windows(rows=6, length=24, seed=0):
    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


class CharTokenizer:
    """Each character is one token id in 2 … VOCAB − 1; BOS 1."""

    bos_token_id, eos_token_id, pad_token_id = 1, 1, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}


TEXT = "".join(chr(97 + (i * 7919) % 26) for i in range(24 * 12 + 5))  # 12 windows of 24 + a short one


def bound(values: torch.Tensor, bins: int) -> torch.Tensor:
    """The stated error bound per column: 2·range/(bins − 1)."""
    return 2 * (values.amax(0) - values.amin(0)).double() / (bins - 1)


# --- the sketch ------------------------------------------------------------------------------------------------

def test_sketch_of_the_integers_0_to_99_is_within_one_cell():
    """Values 0 … 99 (exact percentiles by hand: p/100·99, e.g. the median 49.5) in a 128-cell sketch: 99 < 128,
    so cells are at most 1 wide and every percentile is within 2·99/127 < 1.56 of the exact one."""
    sketch = LogitSketch(1, bins=128)
    sketch.update(torch.arange(100, dtype=torch.float32)[:, None])
    got = sketch.quantiles((0.0, 1.0, 50.0, 99.0, 100.0))[0]
    exact = torch.tensor([0.0, 0.99, 49.5, 98.01, 99.0], dtype=torch.float64)
    assert got[0] == 0 and got[-1] == 99  # the extremes are exact
    assert ((got - exact).abs() <= 2 * 99 / 127).all()


def test_sketch_of_a_constant_is_exact():
    sketch = LogitSketch(2, bins=8)
    sketch.update(torch.tensor([[3.25, -1.5]] * 40))
    assert sketch.quantiles(LEVELS).tolist() == [[3.25] * 3, [-1.5] * 3]


@pytest.mark.parametrize("bins", [64, 512])
def test_streamed_sketch_is_within_the_bound_of_torch_quantile(bins):
    generator = torch.Generator().manual_seed(11)
    data = torch.cat([torch.randn(3000, 5, generator=generator) * torch.tensor([0.1, 1, 3, 10, 50]),
                      torch.rand(1000, 5, generator=generator) * 40 - 5])  # a range that grows as it streams
    sketch = LogitSketch(5, bins=bins)
    for chunk in data.split(333):
        sketch.update(chunk)
    exact = torch.quantile(data.double(), torch.tensor(LEVELS, dtype=torch.float64) / 100, dim=0).T
    assert ((sketch.quantiles(LEVELS) - exact).abs() <= bound(data, bins)[:, None]).all()


# --- the monitor ---------------------------------------------------------------------------------------------

def clean_reference(model, ids, batch=3):
    return reference_percentiles(observe(model, ids, batch).record, LEVELS)


def test_a_refit_from_the_served_windows_is_offline_p1_on_them():
    """Same tokens, same bins: the sketch is order- and batching-independent, so the monitor's refit equals
    Calibrator's P1 fitted offline on those windows, number for number."""
    model, ids = tiny("olmoe"), windows()
    offline = Calibrator(MethodConfig(name="p1", kind="recalibrate", calibration={"batch_size": 3})).fit(
        model, ids, CHIP)
    reference = clean_reference(model, ids)
    with apply(model, CHIP, Plan.none(CHIP)), RoutingMonitor(model, reference, MonitorConfig(bins=1024)) as monitor:
        with torch.no_grad():
            for batch in ids.split(2):  # another batching than the calibrator's
                model(input_ids=batch)
        monitor.end_window()
        monitor.refit()
        online = monitor.router_fixes()
    assert [f.to_dict() for f in online] == [f.to_dict() for f in offline.router]


def test_the_monitor_routes_as_the_installed_plan_would():
    model, ids = tiny("olmoe"), windows()
    plan = Calibrator(MethodConfig(name="p1", kind="recalibrate", calibration={"batch_size": 3})).fit(
        model, ids, CHIP)
    probe = windows(seed=5)
    with apply(model, CHIP, plan), torch.no_grad():
        installed = model(input_ids=probe).logits
    weights = Plan.none(CHIP)
    with apply(model, CHIP, weights), RoutingMonitor(model, clean_reference(model, ids), fixes=plan.router):
        with torch.no_grad():
            monitored = model(input_ids=probe).logits
    assert torch.equal(installed, monitored)


def test_window_figures_count_cold_experts_and_a_drift_refits():
    """A layer's logits scaled ×3 between windows: spread drift 2 (|3 − 1|) and a refit on drift."""
    model, ids = tiny("olmoe"), windows()
    reference = clean_reference(model, ids)
    router = moe_layers(model)[0].router
    with RoutingMonitor(model, reference, MonitorConfig(drift_threshold=0.5, min_tokens=1)) as monitor:
        with torch.no_grad():
            model(input_ids=ids)
        first = monitor.end_window()
        monitor.refit()  # fitted on window 0: it is the drift baseline
        with torch.no_grad():
            router.weight.mul_(3)
            if getattr(router, "bias", None) is not None:
                router.bias.mul_(3)
            model(input_ids=ids)
        second = monitor.end_window()
    assert first.refit is None and first.layers[0].spread_drift == pytest.approx(0.0, abs=1e-9)
    assert second.layers[0].spread_drift == pytest.approx(2.0, rel=0.02) and second.refit == "drift"
    assert all(0 <= layer.cold <= 8 for layer in first.layers)
    assert monitor.refits == 2


def test_bad_monitor_settings_are_one_line_errors():
    with pytest.raises(UserError, match="refit_every"):
        MonitorConfig(refit_every=-1)
    with pytest.raises(UserError, match="drift_threshold"):
        MonitorConfig(drift_threshold=0)
    with pytest.raises(UserError, match="no percentiles for MoE layer"):
        RoutingMonitor(tiny("olmoe"), {})


# --- serving: no peeking, reproducible -------------------------------------------------------------------------

def serve(model, config, events=None):
    """The stream served on CHIP from no correction, scored by the real scorer (recording the order when asked)."""
    reference = clean_reference(model, windows())

    def score(*args):
        result = _score(*args)
        if events is not None:
            events.append(("score", len(monitor.log), monitor.refits))
        return result

    def refitted(window):
        if events is not None:
            events.append(("refit", window, monitor.refits))

    with apply(model, CHIP, Plan.none(CHIP)), RoutingMonitor(model, reference, config, on_refit=refitted) as monitor:
        served = serve_text(model, CharTokenizer(), TEXT, monitor, window=24, step=2, score=score)
        return served, monitor.router_fixes()


def test_every_step_is_scored_before_the_refit_that_uses_it():
    events = []
    served, _ = serve(tiny("olmoe"), MonitorConfig(refit_every=40, min_tokens=1), events)
    scores = [e for e in events if e[0] == "score"]
    refits = [e for e in events if e[0] == "refit"]
    assert len(scores) == len(served.log) == 7 and len(refits) >= 3  # 6 steps of 2 windows, the short one
    for kind, window, refits_before in events:
        if kind == "refit":  # a refit after step w comes after w's score and before w + 1's
            position = events.index((kind, window, refits_before))
            assert events[position - 1][:2] == ("score", window)
    for _, window, refits_at_score in scores:  # step w is scored by the refits of steps < w only
        assert refits_at_score == sum(1 for _, w, _ in refits if w < window)
    assert [e.refit is not None for e in served.log] == [any(w == e.window for _, w, _ in refits) for e in served.log]


def test_a_monitored_run_is_bit_reproducible_and_refits_change_the_scores():
    config = MonitorConfig(refit_every=40, min_tokens=1)
    first, fixes_a = serve(tiny("olmoe"), config)
    second, fixes_b = serve(tiny("olmoe"), config)
    assert first.nll_sum == second.nll_sum and first.to_dict() == second.to_dict()
    assert [f.to_dict() for f in fixes_a] == [f.to_dict() for f in fixes_b]
    never, _ = serve(tiny("olmoe"), MonitorConfig())
    assert first.tokens == never.tokens == len(TEXT)
    assert first.log[0].extra["nll"] == never.log[0].extra["nll"]  # nothing refitted before the first step
    assert first.nll_sum != never.nll_sum and math.isfinite(first.ppl)


# --- romer serve ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from romer.data import load_tokenizer
    from tests.tiny_models import save_tiny

    return save_tiny("olmoe", tmp_path_factory.mktemp("serve") / "olmoe", load_tokenizer(), vocab_size=8192,
                     num_hidden_layers=2, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def test_romer_serve_prints_the_monitors_log_and_writes_it(folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from romer.cli.main import app

    out = tmp_path / "log.json"
    result = CliRunner().invoke(app, ["serve", "--model", str(folder), "--preset", "gaussian", "--max-tokens", "124",
                                      "--window", "32", "--reference-windows", "2", "--refit-every", "64",
                                      "--min-tokens", "1",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if line.startswith("step")]
    assert len(steps) == 4  # 124 tokens in windows of 31 text tokens, one step each
    assert [("refit (schedule)" in line) for line in steps] == [False, True, False, True]  # 32 router tokens a step
    log = json.loads(out.read_text())
    assert log["tokens"] == 124 and [e["refit"] for e in log["log"]] == [None, "schedule", None, "schedule"]


def test_romer_serve_refuses_bad_counts_in_one_line(folder):
    from typer.testing import CliRunner

    from romer.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--model", str(folder), "--step", "0"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
