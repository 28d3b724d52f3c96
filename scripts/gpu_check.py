"""Check kvopt's CUDA paths on a GPU machine with one command, in under 10 minutes.

    python3 scripts/gpu_check.py              # on a CUDA machine; files go to $OUT, else a new folder
    python3 scripts/gpu_check.py --dry-run    # the same steps on tiny models with device=cpu
    python3 scripts/gpu_check.py --steps memory oom    # a subset, e.g. to rerun what failed

Six steps, each in its own process with its own time cap. A step that fails or runs out of
time is recorded with its reason and the next one starts; the whole run keeps within
``--budget-s`` (later caps shrink if earlier steps used theirs up). At a cap the step gets
SIGINT first: kvopt then marks the current trial failed and still writes its results.

1. ``info``        ``python -m kvopt info`` on the device;
2. ``study``       ``python -m kvopt model=gpt2 profile=chat-agent device=cuda`` (default space);
3. ``study_full``  ``model=qwen2.5-0.5b profile=rag search_space=full``, random weights, a trial cap;
4. ``memory``      gpt2 at two batch sizes: torch peak allocated, peak reserved and NVML's
                   per-process figure, each against kvopt.engines.transformers.predict's analytic prediction;
5. ``noise``       scripts/bench_noise.py on the device: CV of the reported medians across fresh processes;
6. ``oom``         a batch far beyond memory at the longest context: it must end as one PRUNED
                   trial with its reason, a larger batch must be pruned without running, and
                   a small batch after it must still run.

Every model runs with random weights (the GPU machine has no network). Files written (7, the
device tool returns at most 8, in one folder): summary.json (every step: status, seconds,
checks, facts), gpu_check.log (every step's output), kvopt.db (the studies, for ``kvopt
report``/``compare``), results_study.json, results_study_full.json, results_oom.json, noise.json.

``--dry-run`` runs the same steps on tiny-gpt2 and tiny-llama on the CPU with tiny budgets
(tests/test_gpu_check.py runs it, so the script cannot rot between GPU draws). There the
out-of-memory is real but bounded: the step's process runs under an address-space limit
(RLIMIT_AS) a few hundred MB above what it holds, so the allocation fails as it would on a
full GPU, without touching the memory other processes on this machine use.

Exit status: 0 when every step passed its checks, 1 when one did not, 2 on bad input
(no CUDA without --dry-run, an output folder that is not empty, a budget <= 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
STEP_NAMES = ("info", "study", "study_full", "memory", "noise", "oom")
# The device tool returns at most 8 files, none deeper than 2 folders: this run writes 7, flat.
MAX_FILES = 8
SUMMARY, LOG, DB = "summary.json", "gpu_check.log", "kvopt.db"
# Seconds between SIGINT and SIGKILL at a step's cap: kvopt writes what it has in that time.
GRACE_S = 15.0
# A step left with less than this of the run's budget is skipped, not started to be killed.
MIN_CAP_S = 10.0
# A batch "far beyond memory": the smallest power of two predicted to need this many times
# what the device holds, so it fails in the first layer, not after minutes of work.
OOM_FACTOR = 4.0
# Dry run: the out-of-memory step's address-space limit above what its process holds.
CPU_OOM_HEADROOM_MB = 512


@dataclass(frozen=True)
class Plan:
    """What each step runs: the GPU plan (real models, on CUDA) or the CPU dry run."""

    mode: str  # "gpu" | "dry-run"
    device: str
    small: str  # gpt2 | tiny-gpt2
    large: str  # qwen2.5-0.5b | tiny-llama
    budget_s: float
    caps: dict[str, float]
    profiles: dict[str, str]  # the workload of each step that runs one
    study: list[str]  # overrides of the default-space study (budget)
    study_full: list[str]  # overrides of the full-space study (trial cap, budget)
    memory_batches: tuple[int, int]
    noise: list[str]  # arguments of scripts/bench_noise.py
    oom_overrides: list[str]  # kept small: the step is about the failure, not the timings


def gpu_plan(budget_s: float) -> Plan:
    """gpt2 and Qwen2.5-0.5B on CUDA, sized to fit 10 minutes with the wheels' install."""
    return Plan(
        mode="gpu",
        device="cuda",
        small="gpt2",
        large="qwen2.5-0.5b",
        budget_s=budget_s,
        # Sum 550 s: within a 600 s device call after ~20 s of installing the wheels. The full
        # space gets most: its probe sets up flex attention and a compile trial compiles.
        caps={"info": 40, "study": 130, "study_full": 160, "memory": 50, "noise": 100, "oom": 70},
        # rag: the longest context (992 + 32 tokens on gpt2), where docs/search.md states the
        # memory model's error; the out-of-memory step needs the longest context too.
        profiles={"study": "chat-agent", "study_full": "rag", "memory": "rag", "oom": "rag"},
        # The default budget (12 trials) with kvopt's own stops inside the cap. Profiles are
        # mixes now (chat-agent: 9 shapes up to 8192+256; rag: 6 up to 32768+512): pinned to two
        # short shapes and to one, so the per-shape confirmation runs and the caps still hold.
        study=[
            "study.timeout=80",
            "confirm.max_seconds=30",
            "profile.context_lengths=[512,1024]",
            "profile.output_lengths=[32]",
        ],
        study_full=[
            "study.n_trials=8",
            "study.timeout=60",
            "measure.max_seconds=6",
            "confirm.max_seconds=20",
            "profile.context_lengths=[8192]",
            "profile.output_lengths=[64]",
        ],
        memory_batches=(1, 8),
        noise=[
            "--models",
            "gpt2",
            "--profile",
            "chat-agent",
            "--runs",
            "3",
            "--modes",
            "adaptive",
            "paired",
            "--override",
            "measure.max_seconds=8",
        ],
        oom_overrides=["measure.adaptive=false"],
    )


def dry_plan(budget_s: float) -> Plan:
    """The same steps on tiny random models on the CPU, with budgets of seconds."""
    tiny = [
        "measure.adaptive=false",
        "search_space.dtype=[float32]",
        "search_space.batch_size=[1,2]",
        "study.n_trials=2",
    ]
    return Plan(
        mode="dry-run",
        device="cpu",
        small="tiny-gpt2",
        large="tiny-llama",
        budget_s=budget_s,
        caps={"info": 60, "study": 90, "study_full": 120, "memory": 60, "noise": 90, "oom": 90},
        # 32 + 8 tokens everywhere: on a 2-core CPU the steps' plumbing is what is being checked.
        profiles={"study": "ci-micro", "study_full": "ci-micro", "memory": "ci-micro", "oom": "ci-micro"},
        study=[*tiny, "confirm.rounds=2"],
        # flex attention and compile cost tens of seconds to set up on a CPU: left to the GPU run.
        study_full=[
            *tiny,
            "confirm.rounds=0",
            "search_space.attn_implementation=[eager,sdpa]",
            "search_space.static.compile=[false]",
        ],
        memory_batches=(1, 4),
        noise=["--models", "tiny-gpt2", "--profile", "ci-micro", "--runs", "2", "--modes", "fixed"],
        oom_overrides=["measure.adaptive=false", "search_space.dtype=[float32]"],
    )


@dataclass
class StepResult:
    """One step as it ended: what ran, how long, its checks and what it found."""

    name: str
    title: str
    command: str
    cap_s: float
    status: str = "not run"  # ok | failed | timed out | skipped
    seconds: float = 0.0
    returncode: int | None = None
    error: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


class Run:
    """The output folder, the log, the work folder and the summary of one check."""

    def __init__(self, plan: Plan, out: Path, steps: list[str]) -> None:
        self.plan = plan
        self.out = out
        self.steps = steps
        self.work = Path(tempfile.mkdtemp(prefix="kvopt-gpu-check-"))
        self.log: TextIO = (out / LOG).open("a", encoding="utf-8")
        self.started = time.monotonic()
        self.summary: dict[str, Any] = {
            "kvopt_gpu_check": 1,
            "mode": plan.mode,
            "device": plan.device,
            "started_at": _now(),
            "finished_at": None,
            "wall_s": None,
            "budget_s": plan.budget_s,
            "steps_asked": steps,
            "environment": None,
            "machine": None,
            "steps": [],
            "files": [],
            "ok": False,
        }

    def left_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.started)

    def say(self, line: str) -> None:
        """A line for the terminal and the log alike."""
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def env(self) -> dict[str, str]:
        # No network there; unbuffered so a killed step's last lines still reach the log.
        return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}

    def run_process(self, cmd: list[str], cap_s: float) -> tuple[int | None, bool]:
        """Run cmd in its own process group, output to the log and terminal; (returncode, timed out).

        At cap_s - GRACE_S the group gets SIGINT (kvopt then stores what it has), at cap_s SIGKILL.
        """
        self.say("$ " + " ".join(cmd))
        proc = subprocess.Popen(
            cmd,
            cwd=self.work,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.say(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, cap_s - GRACE_S))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.say(f"[gpu_check] cap of {cap_s:.0f} s reached: SIGINT, then SIGKILL after {GRACE_S:.0f} s")
            _stop(proc)
        except KeyboardInterrupt:  # the step runs in its own session: Ctrl-C here must reach it too
            _stop(proc)
            raise
        reader.join(timeout=5)
        return proc.returncode, timed_out

    def keep(self, source: Path, name: str, step: StepResult) -> bool:
        """Copy a file a step made into the output folder (flat, one name per step)."""
        if not source.is_file():
            return False
        shutil.copyfile(source, self.out / name)
        if name not in step.files:
            step.files.append(name)
        return True

    def write_summary(self) -> None:
        self.summary["files"] = sorted({p.name for p in self.out.iterdir() if p.is_file()} | {SUMMARY})
        tmp = self.out / (SUMMARY + ".tmp")
        tmp.write_text(json.dumps(self.summary, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.out / SUMMARY)

    def close(self) -> None:
        self.summary["finished_at"] = _now()
        self.summary["wall_s"] = round(time.monotonic() - self.started, 1)
        steps = self.summary["steps"]
        self.summary["ok"] = bool(steps) and all(s["status"] == "ok" for s in steps)
        # The studies' storage, once every step is done: one file for kvopt report / compare.
        db = self.work / DB
        if db.is_file():
            shutil.copyfile(db, self.out / DB)
        self.write_summary()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT to the step's process group, SIGKILL if it has not ended GRACE_S later."""
    _signal_group(proc, signal.SIGINT)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the step's own group: bench_noise's workers too
    except ProcessLookupError:
        pass


# --- the steps ----------------------------------------------------------------------------


def kvopt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvopt", *args]


def worker_cmd(name: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(spec)]


def step_info(run: Run, step: StepResult) -> list[str]:
    return kvopt_cmd("info", f"model={run.plan.small}", f"device={run.plan.device}")


def _study_cmd(run: Run, name: str, model: str, profile: str, extra: list[str]) -> list[str]:
    return kvopt_cmd(
        f"model={model}",
        f"profile={profile}",
        f"device={run.plan.device}",
        "model.weights=random",
        f"storage.url=sqlite:///{run.work / DB}",
        f"hydra.run.dir={run.work / name}",
        *extra,
    )


def step_study(run: Run, step: StepResult) -> list[str]:
    return _study_cmd(run, "study", run.plan.small, run.plan.profiles["study"], run.plan.study)


def step_study_full(run: Run, step: StepResult) -> list[str]:
    return _study_cmd(
        run, "study_full", run.plan.large, run.plan.profiles["study_full"], ["search_space=full", *run.plan.study_full]
    )


def step_memory(run: Run, step: StepResult) -> list[str]:
    spec = {
        "model": run.plan.small,
        "profile": run.plan.profiles["memory"],
        "device": run.plan.device,
        "batches": list(run.plan.memory_batches),
        "result": str(run.work / "memory.json"),
    }
    return worker_cmd("memory", spec)


def step_noise(run: Run, step: StepResult) -> list[str]:
    return [
        sys.executable,
        str(REPO / "scripts" / "bench_noise.py"),
        *run.plan.noise,
        "--device",
        run.plan.device,
        "--out",
        str(run.work / "noise.json"),
    ]


def step_oom(run: Run, step: StepResult) -> list[str]:
    spec = {
        "model": run.plan.small,
        "profile": run.plan.profiles["oom"],
        "device": run.plan.device,
        "overrides": run.plan.oom_overrides,
        "storage": f"sqlite:///{run.work / DB}",
        "output_dir": str(run.work / "oom"),
        "result": str(run.work / "oom_worker.json"),
        "cpu_headroom_mb": CPU_OOM_HEADROOM_MB,
    }
    return worker_cmd("oom", spec)


STEPS: dict[str, tuple[str, Callable[[Run, StepResult], list[str]]]] = {
    "info": ("python -m kvopt info on the device", step_info),
    "study": ("a study with the default space (gpt2, chat-agent)", step_study),
    "study_full": ("a study with the full space (qwen2.5-0.5b, rag), trial cap", step_study_full),
    "memory": ("peak memory three ways at two batch sizes, against the prediction", step_memory),
    "noise": ("scripts/bench_noise.py: CV of reported medians across fresh processes", step_noise),
    "oom": ("a real out-of-memory: one PRUNED trial, larger batches pruned unrun", step_oom),
}


# --- reading what a step left behind ------------------------------------------------------


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def study_facts(results: dict[str, Any]) -> dict[str, Any]:
    """The summary's view of one results.json: trials by state, reasons, recommendation."""
    trials = results.get("trials", [])
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    rec = results.get("recommendation") or {}
    conf = results.get("confirmation") or {}
    return {
        "study_name": results.get("study_name"),
        "device": results.get("device"),
        "wall_s": results.get("wall_s"),
        "stopped_because": results.get("stopped_because"),
        "trials_by_state": states,
        "trials": [
            {
                "number": t["number"],
                "candidate": t["user_attrs"].get("candidate"),
                "state": t["state"],
                "values": t["values"],
                "reason": t["reason"],
                "noisy": t["user_attrs"].get("noisy"),
                "setup_s": t["user_attrs"].get("setup_s"),
                "predicted_mem_error_pct": t["user_attrs"].get("predicted_mem_error_pct"),
            }
            for t in trials
        ],
        "dropped": (results.get("search_space") or {}).get("dropped"),
        "recommendation": rec.get("candidate"),
        "gains_pct": rec.get("gains_pct"),
        "confirmed_rounds": rec.get("confirmed_rounds"),
        "confirmation_rounds_done": conf.get("rounds_done", conf.get("rounds")),
    }


def judge_study(run: Run, step: StepResult, results_name: str) -> None:
    results = _load(run.work / step.name / "results.json")
    step.checks["results_written"] = results is not None
    if results is None:
        return
    run.keep(run.work / step.name / "results.json", results_name, step)
    if run.summary["machine"] is None:
        run.summary["machine"] = results.get("machine")
    step.facts = study_facts(results)
    baseline = next((t for t in results.get("trials", []) if t.get("baseline")), None)
    step.checks["baseline_completed"] = baseline is not None and baseline["state"] == "COMPLETE"
    step.checks["ran_on_the_device"] = str(results.get("device", "")).startswith(run.plan.device)


def judge_info(run: Run, step: StepResult) -> None:
    step.checks["exit_status_0"] = step.returncode == 0


def judge_memory(run: Run, step: StepResult) -> None:
    data = _load(run.work / "memory.json")
    step.checks["measured"] = data is not None and len(data.get("rows", [])) == len(run.plan.memory_batches)
    if not step.checks["measured"]:
        return
    assert data is not None
    step.facts = data
    if run.summary["machine"] is None:
        run.summary["machine"] = data.get("machine")
    rows = data["rows"]
    step.checks["peak_grows_with_batch"] = rows[-1]["measured_mb"]["peak"] > rows[0]["measured_mb"]["peak"]
    if run.plan.device.startswith("cuda"):
        step.checks["reserved_at_least_allocated"] = all(
            r["measured_mb"]["torch_peak_reserved"] >= r["measured_mb"]["torch_peak_allocated"] for r in rows
        )
        # NVML may not list this process inside a PID namespace: then it is a finding, not a failure.
        with_nvml = [r for r in rows if r["measured_mb"].get("nvml_process") is not None]
        if with_nvml:
            step.checks["nvml_at_least_reserved"] = all(
                r["measured_mb"]["nvml_process"] >= r["measured_mb"]["torch_peak_reserved"] for r in with_nvml
            )


def judge_noise(run: Run, step: StepResult) -> None:
    data = _load(run.work / "noise.json")
    step.checks["noise_written"] = data is not None
    if data is None:
        return
    run.keep(run.work / "noise.json", "noise.json", step)
    step.facts = {
        "device": data.get("device"),
        "cases": [
            {
                "model": c["model"],
                "mode": c["mode"],
                "runs": len(c["runs"]),
                "cv": c["cv"],
                "noisy_runs": sum(bool(r.get("noisy")) for r in c["runs"]),
            }
            for c in data.get("cases", [])
        ],
    }
    step.checks["every_mode_measured"] = bool(data.get("cases")) and all(len(c["runs"]) >= 2 for c in data["cases"])


def judge_oom(run: Run, step: StepResult) -> None:
    worker = _load(run.work / "oom_worker.json")
    results = _load(run.work / "oom" / "results.json")
    step.checks["results_written"] = worker is not None and results is not None
    if worker is None or results is None:
        return
    run.keep(run.work / "oom" / "results.json", "results_oom.json", step)
    big, bigger = worker["batch_oom"], worker["batch_larger"]
    trials = {
        (t["params"].get("attn_implementation"), t["params"].get("batch_size")): t for t in results.get("trials", [])
    }
    oom = trials.get(("eager", big))
    larger = trials.get(("eager", bigger))
    after = trials.get(("eager", 1))
    step.facts = {**worker, "trials": study_facts(results)["trials"]}
    step.checks["oom_is_one_pruned_trial_with_its_reason"] = bool(
        oom
        and oom["state"] == "PRUNED"
        and str(oom["reason"]).startswith("out of memory")
        and oom["user_attrs"].get("constraints") == {"runs": 1.0}
        and sum(str(t["reason"]).startswith("out of memory") for t in results["trials"]) == 1
    )
    step.checks["larger_batch_pruned_unrun"] = bool(
        larger
        and oom
        and larger["state"] == "PRUNED"
        and larger["reason"]
        == (f"batch {bigger} >= batch {big}, which ran out of memory with the same settings in trial #{oom['number']}")
        # Never loaded nor run: no timing, no first call.
        and "first_call_s" not in larger["user_attrs"]
        and "trial_s" not in larger["user_attrs"]
    )
    step.checks["small_batch_runs_after_the_oom"] = bool(after and after["state"] == "COMPLETE")
    if after:  # does the allocator give the memory back after an out-of-memory? (reserved, NVML on CUDA)
        step.facts["after_oom_peak_mem"] = after["user_attrs"].get("peak_mem_details")


JUDGES: dict[str, Callable[[Run, StepResult], None]] = {
    "info": judge_info,
    "study": lambda run, step: judge_study(run, step, "results_study.json"),
    "study_full": lambda run, step: judge_study(run, step, "results_study_full.json"),
    "memory": judge_memory,
    "noise": judge_noise,
    "oom": judge_oom,
}


def run_step(run: Run, name: str, index: int) -> StepResult:
    title, make_cmd = STEPS[name]
    cap = min(run.plan.caps[name], run.left_s())
    step = StepResult(name=name, title=title, command="", cap_s=round(cap, 1))
    run.say(f"\n=== step {index}/{len(run.steps)} {name}: {title} (cap {cap:.0f} s) ===")
    if cap < MIN_CAP_S:
        step.status = "skipped"
        step.error = f"the run's budget (--budget-s {run.plan.budget_s:g}) was spent by earlier steps"
        run.say(f"[gpu_check] {name}: skipped: {step.error}")
        return step
    cmd = make_cmd(run, step)
    step.command = " ".join(cmd)
    start = time.monotonic()
    try:
        step.returncode, timed_out = run.run_process(cmd, cap)
        JUDGES[name](run, step)
    except Exception as exc:  # a broken step must not stop the others
        timed_out = False
        step.error = f"{type(exc).__name__}: {exc}"
    step.seconds = round(time.monotonic() - start, 1)
    failed_checks = [k for k, v in step.checks.items() if not v]
    if timed_out:
        step.status = "timed out"
        step.error = step.error or f"stopped at its cap of {cap:.0f} s"
    elif step.returncode != 0 or failed_checks or step.error:
        step.status = "failed"
        step.error = step.error or (
            f"exit status {step.returncode}" if step.returncode != 0 else "checks failed: " + ", ".join(failed_checks)
        )
    else:
        step.status = "ok"
    run.say(f"--- {name}: {step.status} in {step.seconds:.1f} s" + (f": {step.error}" if step.error else ""))
    return step


# --- workers: steps that are Python code rather than a command, each in a fresh process ---


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def worker_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of the baseline candidate at two batch sizes, three ways, against the prediction."""
    from kvopt.api import compose_config
    from kvopt.engines.transformers.candidate import Candidate
    from kvopt.engines.transformers.engine import TransformersEngine
    from kvopt.engines.transformers.loading import ModelLoader
    from kvopt.engines.transformers.predict import predict_memory
    from kvopt.engines.transformers.probe import default_attn_implementation
    from kvopt.engines.transformers.source import resolve_config
    from kvopt.engines.transformers.workload import make_workload
    from kvopt.machine import machine_info, resolve_device
    from kvopt.measure.memory import MB, free_device_memory
    from kvopt.protocol import measure_candidate

    cfg, weights = resolve_config(
        compose_config(
            [f"model={spec['model']}", f"profile={spec['profile']}", f"device={spec['device']}", "model.weights=random"]
        )
    )
    device = resolve_device(cfg.device)
    workload = make_workload(cfg.profile, cfg.model)
    loader = ModelLoader(cfg.model, weights, device, cfg.seed)
    attn = default_attn_implementation(cfg.model, device)
    rows = []
    for batch in spec["batches"]:
        candidate = Candidate("dynamic", attn, cfg.model.dtype, int(batch))
        loaded, _ = loader.get(candidate.dtype, candidate.attn_implementation)
        free_device_memory(device)  # each batch starts from the same allocator state
        # What a trial does: first call, then the first timed run carries the memory probe (CUDA).
        m = measure_candidate(
            TransformersEngine(cfg.model, weights, device, cfg.seed),
            loaded,
            candidate,
            workload,
            warmup=1,
            repetitions=1,
            seed=cfg.seed,
        )
        predicted = predict_memory(cfg.model, candidate, workload)
        d = m.memory.details
        measured: dict[str, float | None] = {"peak": m.memory.peak_bytes / MB}
        if device.type == "cuda":
            measured.update(
                {
                    "torch_peak_allocated": d["torch_peak_allocated_bytes"] / MB,
                    "torch_peak_reserved": d["torch_peak_reserved_bytes"] / MB,
                    "nvml_process": d["nvml_process_bytes"] / MB if "nvml_process_bytes" in d else None,
                    "nvml_device_used": d["nvml_device_used_bytes"] / MB if "nvml_device_used_bytes" in d else None,
                }
            )
        rows.append(
            {
                "candidate": candidate.label,
                "workload": {"prompt_tokens": workload.prompt_tokens, "new_tokens": workload.new_tokens},
                "method": m.memory.method,
                "predicted_mb": predicted.as_dict(),
                "measured_mb": measured,
                "weights_mb": m.weights_bytes / MB,
                "kv_cache_mb": m.kv_cache_bytes / MB,
                # (predicted / measured - 1) in %, as kvopt stores predicted_mem_error_pct.
                "prediction_error_pct": {
                    k: (predicted.total_mb / v - 1.0) * 100.0
                    for k, v in measured.items()
                    if k != "nvml_device_used" and v
                },
            }
        )
    note = None if device.type == "cuda" else "CPU: kvopt's CPU method only; the three CUDA figures need a GPU"
    return {"device": str(device), "machine": machine_info(device), "rows": rows, "note": note}


def worker_oom(spec: dict[str, Any]) -> dict[str, Any]:
    """A study whose trials are queued in order: baseline, batch B (out of memory), batch 2B, batch 1.

    B is the smallest power of two that kvopt.engines.transformers.predict says needs OOM_FACTOR times the device's
    memory, with eager attention at the longest context (the profile's prompt, clamped to the
    model's positions). The memory budget is lifted so the prediction does not prune B before
    it runs: the point is the real failure and what the study learns from it.
    """
    import optuna
    import torch
    from rich.console import Console

    from kvopt import runner
    from kvopt.api import compose_config
    from kvopt.engines.transformers.candidate import Candidate
    from kvopt.engines.transformers.predict import predict_memory
    from kvopt.engines.transformers.workload import make_workload
    from kvopt.machine import machine_info, resolve_device
    from kvopt.measure.memory import MB
    from kvopt.study import enqueue_baseline, open_study

    base = [
        f"model={spec['model']}",
        f"profile={spec['profile']}",
        f"device={spec['device']}",
        "model.weights=random",
        f"storage.url={spec['storage']}",
        "study.name=gpu-check-oom",
        "confirm.rounds=0",
        "pruning.memory_budget_mb=1e12",
        "pruning.dominated=false",
        "search_space.cache_implementation=[dynamic]",
        "search_space.attn_implementation=[eager]",
        *spec["overrides"],
    ]
    cfg = compose_config(base)
    device = resolve_device(cfg.device)
    workload = make_workload(cfg.profile, cfg.model)
    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
        limit = None
    else:
        import resource

        capacity = spec["cpu_headroom_mb"] * 2**20
        limit = 0  # set below, once the study is ready to run: this process's size + capacity

    def predicted(batch: int) -> int:
        return predict_memory(cfg.model, Candidate("dynamic", "eager", cfg.model.dtype, batch), workload).total_bytes

    big = 1
    while predicted(big) < OOM_FACTOR * capacity:
        big *= 2
    cfg = compose_config([*base, f"search_space.batch_size=[1,{big},{2 * big}]", "study.n_trials=4"])
    prepared = runner.prepare(cfg)
    study = open_study(prepared.storage, prepared.name, optuna.samplers.RandomSampler(seed=cfg.seed), {})
    enqueue_baseline(study, prepared.space)
    eager = {**prepared.space.baseline.params(), "attn_implementation": "eager"}
    for batch in (big, 2 * big, 1):
        study.enqueue_trial({**eager, "batch_size": batch}, user_attrs={"queued_because": "gpu_check oom step"})
    if limit is not None:
        limit = _vm_bytes() + capacity
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        runner.tune(cfg, output_dir=Path(spec["output_dir"]), console=Console(soft_wrap=True), prepared=prepared)
    finally:
        if prepared.device_lock is not None:
            prepared.device_lock.close()
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return {
        "device": str(device),
        "machine": machine_info(device),
        "workload": {"prompt_tokens": workload.prompt_tokens, "new_tokens": workload.new_tokens},
        "memory_limit": (
            "device total memory" if limit is None else f"RLIMIT_AS: process size + {spec['cpu_headroom_mb']} MB"
        ),
        "capacity_mb": capacity / MB,
        "batch_oom": big,
        "batch_larger": 2 * big,
        "predicted_mb_oom_batch": predicted(big) / MB,
        # The default budget (what the device has free) would have pruned it unloaded:
        "prediction_alone_would_prune": predicted(big) > capacity,
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"memory": worker_memory, "oom": worker_oom}


def run_worker(name: str, spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = WORKERS[name](spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2, default=str))
    return 0


# --- entry ------------------------------------------------------------------------------


def fail(message: str) -> int:
    print(f"gpu_check: error: {message}", file=sys.stderr)
    return 2


def preflight(plan: Plan) -> tuple[dict[str, Any] | None, str | None]:
    """In a fresh process: can kvopt be imported, and is the device there? (No CUDA context here.)"""
    code = (
        "import json, hydra, optuna, torch, transformers, kvopt.machine\n"
        "from kvopt.machine import library_versions\n"
        "print(json.dumps({'python': __import__('platform').python_version(), 'kvopt': kvopt.machine.__file__,\n"
        "  'versions': library_versions(), 'cuda_available': torch.cuda.is_available(),\n"
        "  'cuda_devices': torch.cuda.device_count(), 'torch_cuda': torch.version.cuda}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=180,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, (
            f"kvopt cannot be imported here ({last}); install it first: pip install -e . here, or "
            "on the GPU machine the wheels from scripts/gpu_wheels.sh (docs/gpu.md)"
        )
    env = json.loads(proc.stdout.strip().splitlines()[-1])
    if plan.mode == "gpu" and not env["cuda_available"]:
        return env, "no CUDA device here; run it on a GPU machine, or add --dry-run for the CPU rehearsal"
    return env, None


def choose_out(given: Path | None, mode: str) -> Path:
    if given is not None:
        return given
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return Path.cwd() / f"gpu_check_{mode}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, tiny budgets")
    parser.add_argument("--out", type=Path, help="output folder (default: $OUT, else a new folder named here)")
    parser.add_argument("--budget-s", type=float, help="seconds for all steps (default: 550 on GPU, 480 dry run)")
    parser.add_argument("--steps", nargs="+", choices=STEP_NAMES, help="run only these steps (default: all)")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(*args.worker)

    budget = args.budget_s if args.budget_s is not None else (480.0 if args.dry_run else 550.0)
    if budget <= 0:
        return fail(f"--budget-s: got {budget:g}; allowed: a number of seconds > 0")
    plan = dry_plan(budget) if args.dry_run else gpu_plan(budget)
    out = choose_out(args.out, plan.mode)
    if out.exists() and not out.is_dir():
        return fail(f"output folder: {out} is a file; allowed: an empty or new folder")
    if out.is_dir() and any(out.iterdir()):
        return fail(
            f"output folder: {out} is not empty (this run writes up to {MAX_FILES} files there); "
            "allowed: an empty or new folder"
        )
    environment, problem = preflight(plan)
    if problem:
        return fail(problem)
    out.mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEP_NAMES if args.steps is None or s in args.steps]
    run = Run(plan, out, steps)
    run.summary["environment"] = environment
    run.say(f"gpu_check ({plan.mode}) on {plan.device}: {len(steps)} steps within {budget:.0f} s; files -> {out}")
    try:
        for index, name in enumerate(steps, 1):
            run.summary["steps"].append(asdict(run_step(run, name, index)))
            run.write_summary()  # after every step: a run killed later still leaves what it had
    finally:
        run.close()
    print_table(run)
    return 0 if run.summary["ok"] else 1


def print_table(run: Run) -> None:
    print(f"\n{'step':<11} {'status':<10} {'seconds':>8}  note")
    for s in run.summary["steps"]:
        print(f"{s['name']:<11} {s['status']:<10} {s['seconds']:>8.1f}  {s['error'] or ''}")
    print(
        f"wall {run.summary['wall_s']} s of a {run.plan.budget_s:.0f} s budget; "
        f"files ({len(run.summary['files'])}): {', '.join(run.summary['files'])} in {run.out}"
    )


if __name__ == "__main__":
    sys.exit(main())
