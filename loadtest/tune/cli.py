"""``python -m loadtest.tune --repo model_repo --model resnet50 --p99-ms 150``: the configuration with
the highest rate this machine serves at a p99 target, proven by a confirmation run."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest import report
from loadtest.tune import costs as batch_costs
from loadtest.tune import output
from loadtest.tune.live import Live
from loadtest.tune.space import Start, first_candidates, model_config, variants
from loadtest.tune.tuner import Outcome, Tuner

RESULTS = Path(__file__).resolve().parents[1] / "results"
DESCRIPTION = ("Find the configuration (runtime, precision, batching, instances/streams, processes) with the highest "
               "rate one model serves on this machine at a p99 target, under Poisson arrivals of real JPEGs, and "
               "prove it with a confirmation run at 90% of that rate. Guide: docs/guides/capacity.md.")


def say(msg: str) -> None:
    print(f"[tune {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.tune", description=DESCRIPTION)
    ap.add_argument("--repo", type=Path, default=Path("model_repo"), help="the model repository")
    ap.add_argument("--model", default="resnet50", help="the model; its _int8/_ov/... siblings are its variants")
    ap.add_argument("--p99-ms", type=float, required=True, help="the p99 target, whole request as a client sees it")
    ap.add_argument("--budget-min", type=float, default=15.0, help="time for the whole search (default 15)")
    ap.add_argument("--confirm-s", type=float, default=60.0, help="the confirmation run's length (default 60)")
    ap.add_argument("--images", type=Path, help="a folder of JPEGs to post (default: scikit-image's photos)")
    ap.add_argument("--runtimes", nargs="+", help="only these runtimes (default: every one that serves here)")
    ap.add_argument("--max-candidates", type=int, default=0, help="stop after this many configurations, the "
                    "default included (0: as many as the budget allows)")
    ap.add_argument("--max-probes", type=int, default=6, help="runs per configuration's search (default 6)")
    ap.add_argument("--probe-seconds", type=float, nargs=2, default=(6.0, 15.0), metavar=("MIN", "MAX"),
                    help="bounds on one run's length (it aims at 400 arrivals)")
    ap.add_argument("--write", action="store_true", help="write the chosen settings into the model's config.pbtxt "
                    "(the old one kept beside it as config.pbtxt.before-tune-<time>)")
    ap.add_argument("--scaling-out", type=Path, help="write the HPA kustomization and the locust profile here")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and the PNG go")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def images(folder: Path | None) -> list[bytes]:
    if folder is None:
        from loadtest.images import sample_jpegs

        return list(sample_jpegs().values())
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not found:
        raise SystemExit(f"--images {folder}: no .jpg files there")
    return [p.read_bytes() for p in found]


def measure_costs(args: argparse.Namespace, image: bytes) -> tuple[list[batch_costs.Costs], list[str], dict[str, int]]:
    found = variants(args.repo, args.model)
    if not any(v.model == args.model for v in found):
        raise SystemExit(f"no model {args.model!r} in {args.repo}: export it first "
                         f"(python -m export --arch {args.model} --repo {args.repo})")
    skipped = [f"{v.model}: {v.skipped}" for v in found if v.skipped]
    measured = []
    for v in (v for v in found if not v.skipped):
        for rt in (r for r in v.runtimes if not args.runtimes or r in args.runtimes):
            say(f"batch costs of {v.model} ({v.precision}) on {rt}")
            try:
                measured.append(batch_costs.measure(args.repo, v.model, rt, image, v.max_batch, say))
            except Exception as e:  # a variant this runtime cannot load here is pruned, with the reason
                skipped.append(f"{v.model} on {rt}: did not load ({type(e).__name__}: {str(e)[:160]})")
    return measured, skipped, {v.model: v.max_batch for v in found}


def default_start(args: argparse.Namespace, measured: list[batch_costs.Costs], starts: list[Start]) -> float:
    """Half the default's predicted rate: its runtime is the first (auto's choice) measured for the model."""
    own = [c for c in measured if c.model == args.model]
    if not own:
        return max(1.0, starts[0].predicted_rps / 4) if starts else 1.0
    b = max(b for b in own[0].batch_ms if b <= model_config(args.repo, args.model).max_batch_size)
    return max(1.0, own[0].predicted_rps(b, args.cores) / 2)


def finish(args: argparse.Namespace, out: Outcome, info: dict[str, Any]) -> None:
    print(output.table(out))
    print(output.summary(out))
    path = report.write_results(args.out, output.to_json(out, info), f"tune-{args.model}",
                                f"tune-{args.model}-latest.json")
    png = output.plot(out, path.with_suffix(".png"),
                      f"{args.model}, p99 <= {args.p99_ms:g} ms, {info['cpu']}, {args.cores} cores")
    say(f"wrote {path} and {png}")
    best = out.best
    flags = " ".join(best.candidate.flags())
    say(f"serve it: python -m service --model-repo {args.repo} --default-model {best.candidate.model} {flags}")
    if args.write:
        if best.candidate.default:
            say("--write: the default configuration is the best here; config.pbtxt left as it is")
        else:
            new, kept = output.write_config_file(args.repo, best.candidate, out, info["cpu"])
            say(f"--write: wrote {new} (the old one is {kept.name})")
    if args.scaling_out:
        values = output.write_scaling(out, args.scaling_out)
        say(f"scaling files in {args.scaling_out}: {values}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from modelrepo.cpu import this_cpu

    cpu = this_cpu().describe()
    say(f"{args.model} in {args.repo}, p99 <= {args.p99_ms:g} ms, budget {args.budget_min:g} min, {cpu}, "
        f"{args.cores} cores")
    t0 = time.monotonic()
    jpegs = images(args.images)
    measured, skipped, max_batch = measure_costs(args, jpegs[0])
    starts, pruned = first_candidates(measured, args.p99_ms, args.cores)
    for line in skipped + pruned:
        say(f"pruned: {line}")
    with tempfile.TemporaryDirectory(prefix="tune-") as tmp:
        live = Live(args.repo, Path(tmp), jpegs)
        tuner = Tuner(args.p99_ms, live.serving, budget_s=args.budget_min * 60 - (time.monotonic() - t0),
                      confirm_s=args.confirm_s, cores=args.cores, say=say, probe_s=tuple(args.probe_seconds),
                      max_candidates=args.max_candidates, max_probes=args.max_probes)
        out = tuner.tune(args.model, default_start(args, measured, starts), starts, max_batch)
    out.pruned = skipped + pruned
    out.wall_s = time.monotonic() - t0
    finish(args, out, {"model": args.model, "repo": str(args.repo), "cpu": cpu, "cores": args.cores,
                       "budget_min": args.budget_min, "confirm_s": args.confirm_s,
                       "costs": [c.to_json() for c in measured], "argv": sys.argv[1:] if argv is None else argv})
    return 0 if out.confirmed_rps > 0 else 1
