"""The prepared GPU check: romer's whole pipeline on one device, stage by stage, each with its own time limit.

    python benchmarks/gpu_check.py [--small] [--device auto] [--json PATH] [--update-docs] [--budget S] [--skip A,B]
    python benchmarks/gpu_check.py --render PATH --update-docs     # docs/gpu.md's table from a JSON already made

Stages, in order (each one's result is written to the JSON as soon as it ends, so a run cut off still returns
its numbers; a stage whose input failed is skipped, saying which):

* ``environment``: torch, transformers, the device and its memory;
* ``default_job``: the bundled default job (``romer run``) on the device, wall time (s); only the zoo models
  present in this tree are run, and it is skipped when none is (a tree sent without the zoo weights);
* ``build``: an OLMoE-1B-7B-shaped checkpoint with seeded random bf16 weights (``--small``: a small one of the
  same family) written as a real safetensors folder into a temporary directory by the real transformers class,
  with the bundled tokenizer: nothing comes from the zoo;
* ``load``: ``romer.load`` of that folder onto the device in bf16 (s);
* ``program``: the default chip (PCM ×10, t = 1 day, MoE blocks analog), normal draws per second next to
  ``torch.randn`` drawing as many float32 normals on the same device (goal ≥ 0.8×);
* ``reprogram``: the same chip programmed again after a restore is bit-identical;
* ``evaluate``: evaluation tokens/s on the programmed model — romer's (``romer.eval.perplexity`` under the
  routing recorder, with romer's sorted-experts kernel and with transformers' ``grouped_mm``) next to the plain
  HF forward (``grouped_mm``, no recorder) on the same windows (goal ≥ 0.95×);
* ``calibrate``: ROMER fitted on ``--calibration-windows`` windows, then the plan applied and scored;
* ``zero_shot``: the bundled ``romer_cloze`` task through lm-eval, first 50 items (``--small``: 4; skipped when
  lm-eval is not importable);
* ``memory``: the peak memory of romer's stages (load, program, evaluate, calibrate, zero-shot: the largest
  ``torch.cuda.max_memory_allocated`` of each, reset at each stage's start; on the CPU the process's peak RSS)
  next to ``romer plan-memory``'s estimate for the same folder, dtype and windows.

``--small`` (what ``make test`` runs, on the CPU in seconds): the small shape, short windows, the default job cut
to one model, one chip and two methods. ``--budget`` (s) caps the whole run: each stage gets the smaller of its
own limit and what is left. Stage limits use SIGALRM, which Python sees between bytecodes: a limit can overrun
by one CUDA kernel or one C++ call.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (ROOT, HERE):  # romer from this tree (the GPU image has it uninstalled); real_size beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from real_size import OLMOE_1B_7B, SMOKE  # noqa: E402  (benchmarks/ is this script's own folder)

DOCS = ROOT / "docs" / "gpu.md"
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
SCHEMA = 1
TOKENIZER = ROOT / "romer" / "data" / "tokenizer"  # the bundled tokenizer (8,192 tokens; id 0 is <|endoftext|>)
GOALS = {"program_vs_randn": 0.8, "eval_vs_hf": 0.95}
ROMER_STAGES = ("load", "program", "evaluate", "calibrate", "zero_shot")  # whose peak GPU memory plan-memory covers
# (stage, its own limit in s for the full check, stages it needs)
STAGES = [("environment", 30, ()), ("default_job", 150, ()), ("build", 120, ()), ("load", 90, ("build",)),
          ("program", 90, ("load",)), ("reprogram", 90, ("program",)), ("evaluate", 60, ("program",)),
          ("calibrate", 90, ("load",)), ("zero_shot", 60, ("load",)), ("memory", 30, ("load",))]
SIZES = {  # eval windows, calibration windows, window (tokens), batch size, timing rounds, zero-shot items
    "full": dict(eval_windows=16, calibration_windows=16, window=512, batch_size=8, rounds=3, task_limit=50),
    "small": dict(eval_windows=2, calibration_windows=2, window=32, batch_size=2, rounds=1, task_limit=4),
}
SMALL_JOB = ["--set", "chip.chips=1", "--set", "methods=[clean, noisy]", "--set", "eval.max_tokens=256",
             "--set", "eval.window=128", "--set", "calibration.sequences=1", "--set", "calibration.window=128"]


class StageTimeout(Exception):
    pass


class Skip(Exception):
    """A stage that cannot run here (lm-eval missing, no zoo model): recorded as skipped with its reason."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise StageTimeout in this (main) thread after ``seconds``; SIGALRM, so between Python bytecodes."""
    def expire(signum, frame):
        raise StageTimeout(f"over its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Check:
    """The run's JSON, rewritten (atomically) after every stage, and the state stages hand on."""

    def __init__(self, json_path: Path, device: torch.device, small: bool, budget: float):
        from romer.io import write_json_atomic

        self._write = write_json_atomic
        self.path, self.device, self.small = json_path, device, small
        self.deadline = time.monotonic() + budget
        self.size = SIZES["small" if small else "full"]
        self.state: dict = {}
        self.result = {"schema": SCHEMA, "mode": "small" if small else "full", "device": str(device),
                       "budget_s": budget, "sizes": self.size, "stages": {}, "goals": {}}
        self.save()

    def save(self) -> None:
        self._write(self.path, self.result)

    def run(self, name: str, limit: float, needs: tuple, body) -> None:
        stages = self.result["stages"]
        missing = [n for n in needs if stages.get(n, {}).get("status") != "ok"]
        left = self.deadline - time.monotonic()
        if missing:
            stages[name] = {"status": "skipped", "reason": f"needs {', '.join(missing)}"}
        elif left < 1:
            stages[name] = {"status": "skipped", "reason": "the run's budget is spent"}
        else:
            started = time.perf_counter()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                with time_limit(min(limit, left)):
                    figures = body(self) or {}
                stages[name] = {"status": "ok", **figures}
                if self.device.type == "cuda":
                    stages[name]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(self.device)
            except Skip as why:
                stages[name] = {"status": "skipped", "reason": str(why)}
            except StageTimeout as why:
                stages[name] = {"status": "timeout", "reason": str(why)}
            except Exception as error:  # recorded, and the stages that do not need this one still run
                first = (str(error).strip().splitlines() or [""])[0][:300]
                stages[name] = {"status": "error", "reason": f"{type(error).__name__}: {first}"}
            stages[name]["seconds"] = round(time.perf_counter() - started, 3)
        print(f"gpu-check {name}: {stages[name]['status']} {stages[name].get('reason', '')}".rstrip(),
              file=sys.stderr, flush=True)
        self.save()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, work) -> float:
        self.sync()
        started = time.perf_counter()
        work()
        self.sync()
        return time.perf_counter() - started


# --- stages ---------------------------------------------------------------------------------------------------

def environment(check: Check) -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": torch.get_num_threads()}
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        out.update(device_name=props.name, device_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    else:
        out["device_name"] = platform.processor() or "cpu"
    return out


def zoo_models_present(models: list[str]) -> list[str]:
    return [m for m in models if (ROOT / "romer" / "models" / "zoo" / m / "model.safetensors").is_file()]


def default_job(check: Check) -> dict:
    from romer.experiment.config_file import load_config

    config = load_config("default")
    models = zoo_models_present(config.models)[:1 if check.small else None]
    if not models:
        raise Skip(f"none of the default job's zoo models ({', '.join(config.models)}) is in this tree")
    with tempfile.TemporaryDirectory(prefix="romer-gpu-check-") as tmp:
        command = [sys.executable, "-m", "romer.cli.main", "run", "default", "--device", str(check.device),
                   "--out", tmp, "--set", f"models=[{', '.join(models)}]", *(SMALL_JOB if check.small else [])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"romer run exit {done.returncode}: {done.stderr.strip()[-300:]}")
        from romer.store import ResultsStore

        with ResultsStore(Path(tmp) / "results.sqlite") as store:
            trials = len(store.rows())
    return {"wall_s": round(wall, 2), "models": models, "trials": trials,
            "command": " ".join(["romer", "run", "--device", str(check.device)] +
                                ([] if models == config.models else ["--set", f"'models=[{', '.join(models)}]'"]))}


def shape(small: bool) -> dict:
    """The published OLMoE-1B-7B shape (``--small``: benchmarks/real_size.py's small one), with the bundled
    tokenizer's special token (id 0) as BOS, EOS and padding."""
    return {**OLMOE_1B_7B, **(SMOKE if small else {}), "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


@torch.no_grad()
def build(check: Check) -> dict:
    """Seeded random bf16 weights, drawn on the device, written by ``save_pretrained`` (safetensors shards)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(tempfile.mkdtemp(prefix="romer-olmoe-shape-"))
    check.state["folder"] = folder
    config = AutoConfig.for_model("olmoe", **shape(check.small))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device=check.device)
    generator = torch.Generator(check.device).manual_seed(0)
    for _, param in sorted(model.named_parameters()):
        if param.ndim == 1:
            param.fill_(1.0)  # the RMS norms' gains
        else:
            param.normal_(0.0, 0.02, generator=generator)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="2GB")
    del model
    if check.device.type == "cuda":
        torch.cuda.empty_cache()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    check.result["shape"] = shape(check.small)
    return {"params": params, "bytes": sum(f.stat().st_size for f in folder.iterdir()),
            "shards": len(list(folder.glob("*.safetensors")))}


def load(check: Check) -> dict:
    import romer

    started = time.perf_counter()
    model, tokenizer = romer.load(check.state["folder"], dtype="bfloat16", device=str(check.device))
    seconds = time.perf_counter() - started
    check.state.update(model=model, tokenizer=tokenizer)
    return {"load_s": round(seconds, 3), "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def randn_seconds(draws: int, device: torch.device) -> float:
    """Seconds torch.randn takes for ``draws`` float32 normals on ``device`` (blocks of 2^24, one generator)."""
    generator, left, block = torch.Generator(device).manual_seed(0), draws, 1 << 24
    torch.randn(block, generator=generator, device=device)  # warm-up (kernel load)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    while left > 0:
        torch.randn(min(left, block), generator=generator, device=device)
        left -= block
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def program(check: Check) -> dict:
    import romer

    chip, model = romer.default_chip(0), check.state["model"]
    handle = None

    def go():
        nonlocal handle
        handle = romer.program(model, chip)

    seconds = check.timed(go)
    check.state.update(chip=chip, handle=handle)
    randn = randn_seconds(handle.draws, check.device)
    ratio = randn / seconds
    check.result["goals"]["program_vs_randn"] = {"value": round(ratio, 3), "goal": GOALS["program_vs_randn"],
                                                 "met": ratio >= GOALS["program_vs_randn"]}
    analog = sum(model.get_parameter(n).numel() for n in handle.names)
    return {"program_s": round(seconds, 3), "draws": handle.draws, "draws_per_s": handle.draws / seconds,
            "randn_s": round(randn, 4), "randn_draws_per_s": handle.draws / randn, "ratio": round(ratio, 3),
            "analog_params": analog}


@torch.no_grad()
def reprogram(check: Check) -> dict:
    """Snapshot the programmed weights, restore, program the same chip again, compare bit for bit."""
    import romer

    model, handle = check.state["model"], check.state["handle"]
    names = handle.names
    nbytes = sum(model.get_parameter(n).numel() * model.get_parameter(n).element_size() for n in names)
    on_device = check.device.type == "cuda" and torch.cuda.mem_get_info(check.device)[0] > 2 * nbytes
    keep = "cpu" if not on_device else check.device
    first = {n: model.get_parameter(n).detach().to(keep, copy=True) for n in names}
    handle.restore()
    check.state["handle"] = handle = romer.program(model, check.state["chip"])
    differ = [n for n in names if not torch.equal(first[n], model.get_parameter(n).detach().to(keep))]
    del first
    check.result["goals"]["bit_identical"] = {"value": not differ, "goal": True, "met": not differ}
    return {"identical": not differ, "tensors": len(names), "differing": differ[:5], "snapshot_on": str(keep)}


def _windows(check: Check) -> tuple[str, torch.Tensor]:
    from romer.eval import token_windows
    from romer.eval.spec import EvalSpec

    tokenizer, window = check.state["tokenizer"], check.size["window"]
    text = EvalSpec(max_tokens=check.size["eval_windows"] * (window - 1), window=window).text(tokenizer)
    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return text, torch.stack(token_windows(ids, window, tokenizer.bos_token_id)).to(check.device)


@torch.no_grad()
def evaluate(check: Check) -> dict:
    """Interleaved rounds (after a warm-up) of the plain HF forward and romer's evaluation on the same windows;
    the median time of each."""
    from romer.eval import perplexity
    from romer.models.sorted_experts import NAME as SORTED
    from romer.routing import record_routing

    model, tokenizer = check.state["model"], check.state["tokenizer"]
    text, batch = _windows(check)
    size, window = check.size["batch_size"], check.size["window"]

    def hf():
        for start in range(0, len(batch), size):
            model(input_ids=batch[start:start + size])

    def romer_eval():
        with record_routing(model):
            perplexity(model, tokenizer, text, window=window, batch_size=size)

    modes = {"hf_forward": ("grouped_mm", hf), "romer_eval": (SORTED, romer_eval),
             "romer_eval_grouped_mm": ("grouped_mm", romer_eval)}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for round_ in range(check.size["rounds"] + 1):  # round 0 warms up
            for mode, (kernel, work) in modes.items():
                model.set_experts_implementation(kernel)
                elapsed = check.timed(work)
                if round_:
                    seconds[mode].append(elapsed)
    finally:
        model.set_experts_implementation(SORTED)
    tokens = batch.numel()
    rates = {mode: tokens / statistics.median(s) for mode, s in seconds.items()}
    best = max(rates["romer_eval"], rates["romer_eval_grouped_mm"])
    ratio = rates["romer_eval"] / rates["hf_forward"]
    check.result["goals"]["eval_vs_hf"] = {"value": round(ratio, 3), "goal": GOALS["eval_vs_hf"],
                                           "met": ratio >= GOALS["eval_vs_hf"],
                                           "best_kernel_value": round(best / rates["hf_forward"], 3)}
    return {"tokens": tokens, "tok_per_s": {m: round(r, 1) for m, r in rates.items()}, "ratio": round(ratio, 3),
            "ratio_grouped_mm": round(rates["romer_eval_grouped_mm"] / rates["hf_forward"], 3)}


def calibrate(check: Check) -> dict:
    import romer
    from romer.eval import perplexity

    model, tokenizer = check.state["model"], check.state["tokenizer"]
    handle = check.state.pop("handle", None)
    if handle is not None:
        handle.restore()  # calibration programs the clean model itself
    window, windows = check.size["window"], check.size["calibration_windows"]
    chip = check.state.get("chip") or romer.default_chip(0)
    started = time.perf_counter()
    plan = romer.calibrate(model, tokenizer, chip, "romer", sequences=windows, window=window,
                           batch_size=check.size["batch_size"])
    check.sync()
    fit = time.perf_counter() - started
    text, batch = _windows(check)
    started = time.perf_counter()
    with torch.no_grad(), romer.apply(model, chip, plan):
        scored = perplexity(model, tokenizer, text, window=window, batch_size=check.size["batch_size"])
        check.sync()
    applied = time.perf_counter() - started
    return {"windows": windows, "fit_s": round(fit, 3), "s_per_window": round(fit / windows, 3),
            "apply_and_eval_s": round(applied, 3), "ppl": scored.ppl if math.isfinite(scored.ppl) else None,
            "replaced_pairs": sum(len(r.pairs) for r in plan.replacement)}


def zero_shot(check: Check) -> dict:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise Skip("lm-eval is not importable here (pip install 'romer[eval]')") from None
    import romer

    limit = check.size["task_limit"]
    started = time.perf_counter()
    result = romer.evaluate(check.state["model"], check.state["tokenizer"], ppl="none", tasks=("romer_cloze",),
                            task_limit=limit, batch_size=check.size["batch_size"])
    seconds = time.perf_counter() - started
    return {"task": "romer_cloze", "limit": limit, "seconds_task": round(seconds, 3),
            "metrics": {k: v for k, v in result.tasks["romer_cloze"].metrics.items() if isinstance(v, (int, float))}}


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory(check: Check) -> dict:
    from romer.models.memory import CPU_RUNTIME, CUDA_CONTEXT, plan_memory

    plan = plan_memory(check.state["folder"], "bfloat16", window=check.size["window"],
                       batch_size=check.size["batch_size"], placement="moe",
                       calibration_windows=check.size["calibration_windows"], device=str(check.device))
    if check.device.type == "cuda":  # romer's own stages (not the check's snapshot in reprogram, nor the build)
        stages = check.result["stages"]
        measured = max(stages[n].get("peak_gpu_bytes", 0) for n in ROMER_STAGES if n in stages)
        source, runtime = "torch.cuda.max_memory_allocated", CUDA_CONTEXT
    else:
        measured, source, runtime = _peak_rss_bytes(), "peak RSS (VmHWM)", CPU_RUNTIME
    ratio = measured / (plan.peak + runtime)
    check.result["goals"]["memory_vs_plan"] = {"value": round(ratio, 3), "goal": 1.0, "met": ratio <= 1.0}
    return {"measured_bytes": measured, "source": source, "plan_peak_bytes": plan.peak, "plan_runtime_bytes": runtime,
            "ratio": round(ratio, 3), "plan_stages": plan.stages}


def _skipped(check: Check) -> dict:
    raise Skip("left out by --skip")


BODIES = {"environment": environment, "default_job": default_job, "build": build, "load": load, "program": program,
          "reprogram": reprogram, "evaluate": evaluate, "calibrate": calibrate, "zero_shot": zero_shot,
          "memory": memory}


def run_check(json_path: Path, device: str = "auto", small: bool = False, budget: float = 480.0,
              skip: tuple[str, ...] = ()) -> dict:
    """Every stage in order but those in ``skip`` (a rerun of what broke); returns the result (also in
    ``json_path``). The temporary checkpoint is removed."""
    import shutil

    from romer.devices import parse_device

    check = Check(Path(json_path), parse_device(device), small, budget)
    scale = 1.0 if not small else 2.0  # small stages on a busy CPU: more headroom, the same shape of run
    try:
        for name, limit, needs in STAGES:
            check.run(name, limit * scale, needs, _skipped if name in skip else BODIES[name])
    finally:
        folder = check.state.get("folder")
        check.state.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return check.result


# --- the docs table -------------------------------------------------------------------------------------------

def _evaluate_figures(stage: dict) -> str:
    rates = stage["tok_per_s"]
    return (f"HF forward {rates['hf_forward']:,.0f} tok/s; romer eval {rates['romer_eval']:,.0f} "
            f"(**{stage['ratio']:.2f}×**, goal ≥ 0.95), with grouped_mm {rates['romer_eval_grouped_mm']:,.0f} "
            f"({stage['ratio_grouped_mm']:.2f}×); {stage['tokens']:,} tokens")


FIGURES = {  # stage → its figures in the docs table
    "environment": lambda s: f"{s['device_name']}; torch {s['torch']}, transformers {s['transformers']}",
    "default_job": lambda s: f"`{s['command']}`: {s['trials']} trials in {s['wall_s']:.1f} s",
    "build": lambda s: f"{s['params'] / 1e9:.2f}B parameters, {s['bytes'] / 2**30:.1f} GiB in {s['shards']} shards",
    "load": lambda s: f"{s['load_s']:.1f} s",
    "program": lambda s: (f"{s['program_s']:.2f} s, {s['draws_per_s'] / 1e9:.2f} G draws/s; torch.randn "
                          f"{s['randn_draws_per_s'] / 1e9:.2f} G/s: **{s['ratio']:.2f}×** (goal ≥ 0.8)"),
    "reprogram": lambda s: f"{'bit-identical' if s['identical'] else 'DIFFERS'} ({s['tensors']} tensors)",
    "evaluate": _evaluate_figures,
    "calibrate": lambda s: (f"ROMER on {s['windows']} windows: {s['fit_s']:.1f} s ({s['s_per_window']:.2f} "
                            f"s/window); applied + scored {s['apply_and_eval_s']:.1f} s"),
    "zero_shot": lambda s: f"{s['task']}, {s['limit']} items: {s['seconds_task']:.1f} s",
    "memory": lambda s: (f"{s['source']} {s['measured_bytes'] / 2**30:.2f} GiB; plan-memory "
                         f"{(s['plan_peak_bytes'] + s['plan_runtime_bytes']) / 2**30:.2f} GiB "
                         f"(**{s['ratio']:.2f}×** of the estimate)"),
}


def _figures(name: str, stage: dict) -> str:
    return FIGURES[name](stage) if stage["status"] == "ok" else stage.get("reason", "")


def table(result: dict) -> str:
    env = result["stages"].get("environment", {})
    where = env.get("device_name", result["device"])
    lines = [f"`make gpu-check` ({result['mode']} form) on {where} ({result['device']}):", "",
             "| stage | status | time | figures |", "|---|---|---:|---|"]
    for name, _, _ in STAGES:
        stage = result["stages"].get(name)
        if stage is None:
            lines.append(f"| {name} | not reached | — | the run ended before it |")
            continue
        seconds = f"{stage['seconds']:.1f} s" if "seconds" in stage else "—"
        lines.append(f"| {name} | {stage['status']} | {seconds} | {_figures(name, stage)} |")
    lines += ["", "Regenerate: `make gpu-check` on a machine with a CUDA GPU (docs/gpu.md says how to send the tree).",
              f"Stage limits and sizes: `benchmarks/gpu_check.py`; budget {result['budget_s']:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small shape and sizes (CPU, seconds)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "gpu-check.json")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--skip", default="", help="stages to leave out, comma-separated (e.g. default_job,zero_shot)")
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs/gpu.md's table")
    parser.add_argument("--render", type=Path, help="only render this JSON's table (with --update-docs: into docs)")
    args = parser.parse_args(argv)
    if args.render is not None:
        import json

        result = json.loads(args.render.read_text())
    else:
        skip = tuple(name for name in args.skip.split(",") if name)
        unknown = sorted(set(skip) - set(BODIES))
        if unknown:
            parser.error(f"--skip: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(BODIES)}")
        result = run_check(args.json, args.device, args.small, args.budget, skip)
    text = table(result)
    print(text)
    if args.update_docs:
        from romer.io import replace_between_markers

        replace_between_markers(DOCS, BEGIN, END, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
