"""`python scripts/router_noise_p1.py MODEL`: per MoE layer, how much of the router-logit noise energy P1 (all
layers, fitted on 32 train windows of 512 tokens) removes on validation tokens (the first 4,410 in source order:
romer.eval.spec.EvalSpec),
against the router-noise account's systematic and affine shares (romer.routing.router_noise). One chip (seed 0)
of the default chip; prints one JSON line (docs/router-noise.md)."""
import json
import sys

import torch

torch.set_num_threads(1)
from romer.calibrate import Calibrator, MethodConfig, apply
from romer.calibrate.config import CalibrationData
from romer.eval.spec import EvalSpec
from romer.eval import perplexity
from romer.models import load_model
from romer.noise.chip import default_chip, program
from romer.routing.router_noise import noise_account, record_logit_noise, record_router_inputs, router_noise_report
model_name = sys.argv[1]
lm, tok = load_model(model_name)
text = EvalSpec(split="validation", order="source", max_tokens=4410).text(tok)
chip = default_chip(0)
method = MethodConfig(name="recalibration", kind="recalibrate", calibration=CalibrationData(sequences=32))
cal = Calibrator(method)
plan = cal.fit(lm, cal.windows(tok), chip)
with record_router_inputs(lm) as ref:
    clean = perplexity(lm, tok, text, window=512)
with program(lm, chip):
    with record_logit_noise(lm, ref) as noisy_rec:
        noisy = perplexity(lm, tok, text, window=512)
with apply(lm, chip, plan):
    with record_logit_noise(lm, ref) as p1_rec:
        p1 = perplexity(lm, tok, text, window=512)
rows_n = router_noise_report(ref, noisy_rec)
out = {"model": model_name, "ppl": [clean.ppl, noisy.ppl, p1.ppl], "layers": []}
for rn, rec in zip(rows_n, p1_rec):
    a = noise_account(rec.pairs.moments())
    out["layers"].append({"layer": rn["layer"], "systematic": rn["measured"]["systematic_share"],
                          "affine": rn["measured"]["affine_share"], "weight_systematic": rn["weight"]["systematic_share"],
                          "p1_removed": 1 - a["noise_ms"] / rn["measured"]["noise_ms"],
                          "snr_noisy_db": rn["measured"]["logit_snr_db"], "snr_p1_db": a["logit_snr_db"]})
print(json.dumps(out))
