"""Search-step speed and memory of nasseg's engine (every mode) against NNI 3.0's DARTS.

    python benchmarks/engine_speed.py                  # defaults: < 10 min on 2 CPU cores
    python benchmarks/engine_speed.py --out bench/engine_speed --steps 7 --threads 4

Cases: (a) ``cell``: one UXNet-like 3D cell, the seven normal ops of UXNet as one op choice on
16 channels, a 32^3 input, batch 2 (then a 1x1 head and Dice + CE); (b) ``uxnet-f8`` and
``uxnet-f16``: the whole UXNet supernet (3 levels, features 8 or 16, 1-channel 32^3 input,
batch 2).

Engines, each in a FRESH subprocess (so its peak RSS is its own):
  * ``nasseg-<mode>``: nasseg's ``DartsSearch._arch_step`` then ``_weight_step`` (first order)
    on fixed batches, in mode full / partial / gumbel / binary; ``nasseg-full+cl``: full mixing
    with ``channels_last=True`` (a CPU lever too, for some sizes);
  * ``nni-darts``: NNI's ``DartsLightningModule`` (``nni.nas.strategy.DARTS``, first order)
    trained by Lightning; one step = one of its training batches = its architecture step + its
    weight step, timed by a Lightning callback;
  * ``ideal``: 2 x the sum, over every candidate op of every op choice, of the op's standalone
    forward + backward time (PyTorch's own kernels; weights requiring grad, and the input too
    inside a supernet, not for the cell, whose input is the data) on the input it gets in the
    supernet: what two passes over the candidates would cost with no mixing overhead at all.

Step time: median of ``--steps`` steps after ``--warmup`` steps. Memory: peak RSS of the
subprocess (``getrusage``), and the step's share = peak RSS minus the RSS just before the first
step (imports, model, data and torch's start-up, run first by a tiny conv, excluded); on CUDA
also ``max_memory_allocated``; and, exact and noise-free, the activation memory autograd saves
in one step's forward (``saved MB``: the larger of the architecture and the weight step;
saved-tensor hooks, distinct storages). Writes ``OUT/engine_speed.json`` and prints the table
with ratios to NNI, to the ideal and to full mixing. Machines shared with other work are noisy: compare ratios taken in one run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODES = ("full", "partial", "gumbel", "binary")
CASES: dict[str, dict[str, Any]] = {
    "cell": {"kind": "cell", "channels": 16, "size": 32, "batch": 2},
    "uxnet-f8": {"kind": "uxnet", "features": 8, "levels": 3, "size": 32, "batch": 2},
    "uxnet-f16": {"kind": "uxnet", "features": 16, "levels": 3, "size": 32, "batch": 2},
}
ENGINES = tuple(f"nasseg-{m}" for m in MODES) + ("nasseg-full+cl", "nni-darts", "ideal")


# ----- the spaces ---------------------------------------------------------------------------
def _cell_space_class():
    from nasseg.ops import NORMAL_OPS, OutputHead, normal_op
    from nasseg.space import SearchSpace

    class UXNetCell(SearchSpace):
        """One UXNet cell: the seven normal ops as one op choice, then a 1x1 head."""

        def __init__(self, channels: int = 16, num_classes: int = 2, spatial_dims: int = 3
                     ) -> None:
            super().__init__()
            self.cell = self.op_choice("cell", {n: normal_op(n, spatial_dims, channels)
                                                for n in NORMAL_OPS})
            self.head = OutputHead(spatial_dims, channels, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.cell(x))

    return UXNetCell


def build_space(case: dict[str, Any]):
    if case["kind"] == "cell":
        return _cell_space_class()(channels=case["channels"], num_classes=2)
    from nasseg.space import create_space
    return create_space("uxnet", knobs={"sbb": True}, in_channels=1, num_classes=3,  # ops too
                        spatial_dims=3, features=case["features"], levels=case["levels"])


def make_batches(case: dict[str, Any], n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cin = case["channels"] if case["kind"] == "cell" else 1
    classes = 2 if case["kind"] == "cell" else 3
    shape = (case["batch"],) + (case["size"],) * 3
    return [{"image": torch.randn(shape[0], cin, *shape[1:], generator=g),
             "label": torch.randint(0, classes, shape, generator=g)} for _ in range(n)]


# ----- measurements (inside the fresh subprocess) -------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_mb(fn) -> float:
    """MB of activations autograd saves for backward while ``fn`` runs (exact, noise-free)."""
    from nasseg.runtime.cost import saved_activation_bytes

    return saved_activation_bytes(fn) / 2**20


def _memory(before: float, device: torch.device) -> dict[str, Any]:
    peak = _peak_rss_mb()
    return {"peak_rss_mb": peak, "rss_before_steps_mb": before, "step_rss_mb": peak - before,
            "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda" else None}


def run_nasseg(case: dict[str, Any], mode: str, warmup: int, steps: int,
               device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    from nasseg.data import SegmentationData
    from nasseg.artifacts.run_folder import RunFolder
    from nasseg.searches.darts import DartsSearch, SearchConfig

    torch.manual_seed(0)
    space = build_space(case)
    classes = 2 if case["kind"] == "cell" else 3
    tiny = SegmentationData("bench", np.zeros((6, 1, 4, 4, 4), np.float32),
                            np.zeros((6, 4, 4, 4), np.int64),
                            [f"c{i}" for i in range(classes)])
    config = SearchConfig(epochs=1, warmup_epochs=0, batch_size=case["batch"], device=str(device),
                          mode=mode, channels_last=channels_last, extend_unlearned=0)
    with tempfile.TemporaryDirectory() as tmp:
        engine = DartsSearch(space, tiny, RunFolder(Path(tmp)), config, show_progress=False)
        batches = [{k: v.to(device) for k, v in b.items()} for b in make_batches(case, 2, 1)]
        engine.model.train()
        before = _rss_mb()
        times = []
        for i in range(warmup + steps):
            _sync(device)
            t = time.perf_counter()
            engine._arch_step(batches[0], batches[1], 0, i)
            engine._weight_step(batches[1], 0, i)
            _sync(device)
            times.append(time.perf_counter() - t)
        memory = _memory(before, device)
        # activations saved by the forward of each kind of step (sampled modes: worst of 5)
        from nasseg.searches.darts.engine import _grad_enabled
        saved = 0.0
        for frozen in (engine.weights, engine.arch_params):
            with _grad_enabled(frozen, False):
                for _ in range(5 if mode in ("gumbel", "binary") else 1):
                    saved = max(saved, saved_mb(
                        lambda: engine._loss(batches[0], "benchmark", 0, 0)))
        return {"times": times[warmup:], **memory, "saved_mb": saved,
                "fully_mixed": list(engine.arch.fully_mixed)}


def run_nni(case: dict[str, Any], warmup: int, steps: int, device: torch.device
            ) -> dict[str, Any]:
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
    from nni.nas.strategy import DARTS

    from nasseg.searches.nni.darts import _ArrayDataset, _nni_classes, _quiet

    torch.manual_seed(0)
    space = build_space(case)
    n = warmup + steps
    train = make_batches(case, n, 1)
    val = make_batches(case, n, 2)

    def dataset(batches):
        return _ArrayDataset({k: torch.cat([b[k] for b in batches]) for k in batches[0]}, "b")

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.before: float | None = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self.before is None:
                self.before = _rss_mb()
            _sync(device)
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            _sync(device)
            self.times.append(time.perf_counter() - self.t)

    timer = StepTimer()
    with _quiet():
        strategy = DARTS(arc_learning_rate=3e-4, gradient_clip_val=12.0)
        supernet = strategy.mutate_model(copy.deepcopy(space))
        training = _nni_classes()["SegmentationModule"](3e-3, 1e-4)
        trainer = Trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu",
                          devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, callbacks=[timer])
        evaluator = Lightning(
            training, trainer,
            train_dataloaders=DataLoader(dataset(train), batch_size=case["batch"]),
            val_dataloaders=DataLoader(dataset(val), batch_size=case["batch"]))
        evaluator = strategy.mutate_evaluator(evaluator)
        evaluator.evaluate(supernet)
    if len(timer.times) != n:
        raise RuntimeError(f"NNI ran {len(timer.times)} steps, expected {n}")
    memory = _memory(timer.before or 0.0, device)
    # both of NNI's steps run the forward with every parameter requiring grad
    batch = {k: v.to(device) for k, v in train[0].items()}
    stage = supernet.training_stages()[0]
    saved = saved_mb(lambda: supernet.compute_loss(supernet.forward_batch(batch), batch, stage))
    return {"times": timer.times[warmup:], **memory, "saved_mb": saved}


def run_ideal(case: dict[str, Any], reps: int, device: torch.device) -> dict[str, Any]:
    """2 x sum of every candidate's standalone forward + backward on its supernet input."""
    from nasseg.searches.darts.relaxation import MixedOp, relax

    torch.manual_seed(0)
    space = build_space(case)
    relax(space)
    space.to(device)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name, m in space.named_modules() if isinstance(m, MixedOp)]
    with torch.no_grad():
        space(make_batches(case, 1, 1)[0]["image"].to(device))
    for h in hooks:
        h.remove()
    total = 0.0
    per_op: dict[str, float] = {}
    for name, m in space.named_modules():
        if not isinstance(m, MixedOp):
            continue
        # inside the supernet an op's input needs a gradient; the cell's input is the data
        x = inputs[name].clone().requires_grad_(case["kind"] != "cell")
        for cand, op in m.candidates.items():
            times = []
            for _ in range(reps + 1):
                _sync(device)
                t = time.perf_counter()
                y = op(x)
                y.backward(torch.ones_like(y))
                _sync(device)
                times.append(time.perf_counter() - t)
            med = statistics.median(times[1:])
            total += med
            per_op[cand] = per_op.get(cand, 0.0) + med
    return {"times": [2 * total], "per_op_seconds": per_op}


def _start_runtime(device: torch.device) -> None:
    """Start torch's one-time machinery (thread pools, oneDNN, the autograd engine's threads,
    the CUDA context) with a tiny conv forward and backward, so that the step memory measured
    afterwards is the steps' own and not the runtime's start-up, the same for every engine."""
    conv = torch.nn.Conv3d(2, 2, 3, padding=1).to(device)
    x = torch.randn(1, 2, 8, 8, 8, device=device, requires_grad=True)
    torch.nn.functional.interpolate(conv(x), scale_factor=2).sum().backward()
    _sync(device)


def one(config: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    _start_runtime(device)
    case = CASES[config["case"]]
    engine = config["engine"]
    if engine.startswith("nasseg-"):
        mode, _, extra = engine.split("-", 1)[1].partition("+")
        out = run_nasseg(case, mode, config["warmup"], config["steps"], device,
                         channels_last=extra == "cl")
    elif engine == "nni-darts":
        out = run_nni(case, config["warmup"], config["steps"], device)
    else:
        out = run_ideal(case, 3, device)
    out["step_s"] = statistics.median(out["times"])
    out["step_min_s"] = min(out["times"])
    return out


# ----- the driver ---------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| case | engine | step s (median) | x NNI | x ideal | x full | peak RSS MB | "
            "step RSS MB | step RSS x NNI | step RSS x full | saved MB | saved x NNI | "
            "saved x full |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["case"], r["engine"]): r for r in results}
    for r in results:
        if "error" in r:
            rows.append(f"| {r['case']} | {r['engine']} | error: {r['error'][:60]} |"
                        + " |" * 10)
            continue
        nni = by.get((r["case"], "nni-darts"), {})
        ideal = by.get((r["case"], "ideal"), {})
        full = by.get((r["case"], "nasseg-full"), {})
        mem, saved = r.get("step_rss_mb"), r.get("saved_mb")
        rows.append(
            f"| {r['case']} | {r['engine']} | {r['step_s']:.3f} | "
            f"{_fmt(_ratio(r['step_s'], nni.get('step_s')))} | "
            f"{_fmt(_ratio(r['step_s'], ideal.get('step_s')))} | "
            f"{_fmt(_ratio(r['step_s'], full.get('step_s')))} | "
            f"{_fmt(r.get('peak_rss_mb'), '.0f')} | {_fmt(mem, '.0f')} | "
            f"{_fmt(_ratio(mem, nni.get('step_rss_mb')))} | "
            f"{_fmt(_ratio(mem, full.get('step_rss_mb')))} | {_fmt(saved, '.0f')} | "
            f"{_fmt(_ratio(saved, nni.get('saved_mb')))} | "
            f"{_fmt(_ratio(saved, full.get('saved_mb')))} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/engine_speed"))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(json.loads(args.one))), flush=True)
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    results = []
    start = time.perf_counter()
    for case in args.cases:
        for engine in args.engines:
            config = {"case": case, "engine": engine, "warmup": args.warmup,
                      "steps": args.steps, "threads": args.threads, "device": args.device}
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)],
                                  capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                result = {"error": err}
            else:
                result = json.loads(lines[-1][len("RESULT "):])
            result.update(case=case, engine=engine, wall_s=time.perf_counter() - t)
            results.append(result)
            print(f"{case:10s} {engine:15s} step {result.get('step_s', float('nan')):.3f}s  "
                  f"step RSS {result.get('step_rss_mb') or float('nan'):.0f} MB  "
                  f"({result['wall_s']:.0f}s){'  ERROR ' + result['error'] if 'error' in result else ''}",
                  file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "device": args.device,
            "warmup": args.warmup, "steps": args.steps, "cases": {c: CASES[c] for c in args.cases},
            "seconds": time.perf_counter() - start}
    from nasseg.artifacts.files import write_json
    write_json(args.out / "engine_speed.json", {"meta": meta, "results": results})
    (args.out / "engine_speed.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
