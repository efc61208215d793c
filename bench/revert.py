"""The revert sweep's seconds per target: the straightforward loop against conflux's sweep, on one model.

    .venv/bin/python bench/revert.py [--hidden 256 --layers 4 --vocab 2048] [--pairs 76 --new-tokens 32]
                                     [--targets 2] [--no-generate] [--repeat 2] [--threads N]

The workspace is the persona study's revert input at a chosen size: a tiny Llama built on the bundled corpus
(the base), a full "fine-tune" (base + Gaussian noise on every tensor, as a full DPO fine-tune writes one),
``--pairs`` held-out persona-vs-general pairs and as many prompts to generate from (the default config holds
out 76 of each). Both sides evaluate the same ``--targets`` layer, module and cell targets each (evenly
spaced, so late layers are in the sample):

- straightforward: per target, swap the base tensors in and run the persona metrics from text
  (``evaluate_variant``: tokenize prompts and pairs, generate, score), then swap back, as the sweep did
  before issue 21;
- conflux: :func:`conflux.analysis.revert.revert_sweep_job` itself (inputs tokenized once, τ once per
  parameter, each target's scoring resumed at the first layer it changes).

``--src DIR/src`` runs both sides on another checkout's package (``git archive <commit> src | tar -x -C
DIR``), so a change is timed against its parent the same way. Printed: seconds per target of each (best of
``--repeat`` interleaved runs), their ratio, the load average, and whether the two sides' metrics agree
(they must: the bench exits 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

# --src times another checkout's package (e.g. the commit before a change) with this bench.
_SRC = (
    sys.argv[sys.argv.index("--src") + 1]
    if "--src" in sys.argv
    else Path(__file__).resolve().parents[1] / "src"
)
sys.path.insert(0, str(_SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def straightforward(ws: dict, targets, generate: bool) -> tuple[float, list[dict]]:
    """The sweep as it ran before: per target, evaluate_variant from text and τ computed afresh."""
    from conflux.analysis.revert import BaseSwap
    from conflux.analysis.tensor_io import WeightFiles
    from conflux.evaluation.persona_eval import evaluate_variant, held_out_inputs
    from conflux.modeling.base_model import base_model_dir, working_dtype
    from conflux.modeling.variants import load_variant

    persona, prompts, pairs = held_out_inputs(ws["sft_eval"], ws["pairs_eval"])
    model, tokenizer = load_variant(ws["manifest"], ws["model_dir"], dtype=working_dtype())
    base = WeightFiles(base_model_dir(ws["manifest"]))
    swap = BaseSwap(model, base)
    # The unreverted model first, untimed, as the sweep evaluates it before its targets (and warms up).
    evaluate_variant(
        model, tokenizer, prompts if generate else [], pairs, persona, ws["settings"], ws["generation"]
    )
    started = time.perf_counter()
    rows = []
    for target in targets:
        getattr(swap, "_squared", {}).clear()  # the old swap computed each target's τ from its tensors
        with swap.reverted(target.select(base.names)) as l2:
            metrics = evaluate_variant(
                model,
                tokenizer,
                prompts if generate else [],
                pairs,
                persona,
                ws["settings"],
                ws["generation"],
            )["metrics"]
        rows.append({"label": target.label, "tau_l2": l2, "metrics": metrics})
    return time.perf_counter() - started, rows


def conflux_sweep(ws: dict, targets, generate: bool, out: Path) -> tuple[float, list[dict]]:
    """revert_sweep_job on the same targets (its target list is cut to the bench's), timed over the targets
    only: loading and the unreverted evaluation happen once per sweep on both sides and are not timed."""
    import conflux.analysis.revert as revert

    clock: dict[str, float] = {}
    chosen = [t.label for t in targets]
    real_targets, real_progress = revert.revert_targets, revert.with_progress

    def cut_targets(*args, **kwargs):
        return [t for t in real_targets(*args, **kwargs) if t.label in chosen]

    def timed(items, **kwargs):  # the sweep's loop over targets: start the clock when it starts
        clock["start"] = time.perf_counter()
        yield from items

    revert.revert_targets, revert.with_progress = cut_targets, timed
    try:
        paths = ("manifest", "model_dir", "sft_eval", "pairs_eval", "settings", "generation")
        record = revert.revert_sweep_job(
            method="dpo", seed=0, out=out, layers=None, modules=None, cells=True, generate=generate,
            **{k: ws[k] for k in paths},
        )  # fmt: skip
    finally:
        revert.revert_targets, revert.with_progress = real_targets, real_progress
    return time.perf_counter() - clock["start"], record["targets"]


def main() -> None:
    from revert_ws import workspace

    from conflux.analysis.revert import revert_targets
    from conflux.analysis.tensor_io import WeightFiles
    from conflux.modeling.base_model import base_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--pairs", type=int, default=76)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--targets", type=int, default=2, help="N layer, module and cell targets each, evenly spaced"
    )
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--src", help="the conflux package directory to time (default: this checkout's src/)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generate = not args.no_generate

    root = Path(tempfile.mkdtemp())
    ws = workspace(root / "ws", hidden=args.hidden, layers=args.layers, vocab=args.vocab, pairs=args.pairs,
                   new_tokens=args.new_tokens)  # fmt: skip
    every = revert_targets(
        WeightFiles(base_model_dir(ws["manifest"])).names, layers=None, modules=None, cells=True
    )
    targets = []
    for kind in ("layer", "module", "cell"):  # evenly spaced, so that late layers are in the sample too
        of_kind = [t for t in every if t.kind == kind]
        n = min(args.targets, len(of_kind))
        targets += [of_kind[i * len(of_kind) // n] for i in range(n)]
    times: dict[str, list[float]] = {"straightforward": [], "conflux": []}
    loads = []
    for _ in range(args.repeat):
        loads.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
        old_s, old_rows = straightforward(ws, targets, generate)
        new_s, new_rows = conflux_sweep(ws, targets, generate, root / "sweep.json")
        times["straightforward"].append(old_s / len(targets))
        times["conflux"].append(new_s / len(targets))
    worst = 0.0
    for old, new in zip(old_rows, new_rows, strict=True):
        assert old["label"] == new["label"]
        worst = max(worst, abs(old["tau_l2"] - new["tau_l2"]) / max(old["tau_l2"], 1e-30))
        a, b = old["metrics"], new["metrics"]
        for key in ("perplexity_general", "perplexity_persona"):
            worst = max(worst, abs(a[key] - b[key]) / a[key])
        worst = max(worst, abs(a["persona_margin"]["mean"] - b["persona_margin"]["mean"]))
        same = a["persona_margin"]["accuracy"] == b["persona_margin"]["accuracy"] and a["style"] == b["style"]
        if not same:
            worst = float("inf")
    best_old, best_new = min(times["straightforward"]), min(times["conflux"])
    print(
        f"{len(targets)} targets, generate={generate}: straightforward {best_old:.3f} s/target, "
        f"conflux {best_new:.3f} s/target, ratio {best_old / best_new:.2f}x; largest metric difference "
        f"{worst:.2e}; load {loads}",
        flush=True,
    )
    print(json.dumps({"config": vars(args), "s_per_target": times, "max_difference": worst, "load": loads}))
    if worst > 1e-6:
        print("METRICS DIFFER between the two paths", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
