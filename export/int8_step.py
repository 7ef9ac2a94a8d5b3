"""``NAME_int8``: quantize, gate, and keep the first format that passes (``export.quantize`` says which and why).

ONNX Runtime QDQ tries the portable formats in order (``--int8-format auto``) and keeps the first that
passes its gate: the default gate (``modelrepo.checkset``'s score on the check set) or, with
``--eval-dir``, the top-1 drop on a labelled set. NNCF quantizes one OpenVINO IR with 7-bit weights
(``export.openvino.nncf_parameters``). Every candidate's score is printed and recorded, the chosen format
goes into the model's provenance, and a check set travels with the version.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from export import images
from export.context import ExportContext
from export.errors import ExportError
from export.eval_gate import EvalVerdict
from export.models import RANDOM
from export.parity import Runner, ort_runner
from export.quantize import Int8Format, Int8Result, Quantizer, candidates, gate_int8


@dataclass(frozen=True)
class Tried:
    """One candidate format: its gate result, and the labelled-set verdict with ``--eval-dir``."""

    fmt: str
    words: str
    res: Int8Result
    verdict: EvalVerdict | None
    runners: list[Runner]

    @property
    def passed(self) -> bool:
        return self.verdict.passed if self.verdict is not None else self.res.passed

    def line(self) -> str:
        judged = f"; {self.verdict.summary('INT8')}" if self.verdict is not None else ""
        return f"{self.fmt}: {self.res.agreement.summary()}{judged} -> {'pass' if self.passed else 'FAIL'}"


def served_runners(model: Path) -> list[Runner]:
    """The CPU runtimes that can serve this INT8 model here, as the gate check measures them."""
    from export import openvino

    runners = [] if model.suffix == ".xml" else [ort_runner(model)]
    if openvino.available():
        runners.append(openvino.ov_runner(model))  # OpenVINO's default precision, as the service runs it
    return runners


def _try(ctx: ExportContext, fmt: str, words: str, model: Path, threshold: float) -> Tried:
    runners = served_runners(model)
    res = gate_int8(ctx.ref, model, runners[0], threshold)
    verdict = ctx.evaluation.judge(runners[0]) if ctx.evaluation is not None else None
    tried = Tried(fmt, words, res, verdict, runners)
    print(f"INT8 {tried.line()}", flush=True)
    return tried


def _ort_qdq(ctx: ExportContext, out: Path, threshold: float) -> list[Tried]:
    """Each candidate format in turn, until one passes (with ``--eval-dir``: every one, see ``_choose``)."""
    formats: list[Int8Format] = candidates(ctx.opts.int8_format)
    quantizer = Quantizer(ctx.ref.fp32, images.calibration_set(ctx.loaded.preprocess, ctx.opts.calib_dir),
                          out.parent)
    tried: list[Tried] = []
    try:
        for fmt in formats:
            model = quantizer.quantize(fmt, out.with_name(f"{fmt.name}.candidate.onnx"))
            tried.append(_try(ctx, fmt.name, fmt.words, model, threshold))
            if tried[-1].passed and ctx.evaluation is None:
                break
    finally:
        quantizer.close()
    return tried


def _choose(tried: list[Tried], labelled: bool) -> Tried:
    """The first that passed (the fastest), or with a labelled gate the passer that scores best on the check
    set (a small labelled set cannot tell two formats apart; the check set can); the last when none passed."""
    passed = [t for t in tried if t.passed]
    if not passed:
        return tried[-1]
    return max(passed, key=lambda t: t.res.agreement.score) if labelled else passed[0]


def _keep(chosen: Tried, tried: list[Tried], out: Path) -> Int8Result:
    """Move the chosen candidate's file to ``out``; delete the others."""
    for t in tried:
        if t is not chosen:
            t.res.path.unlink(missing_ok=True)
    chosen.res.path.replace(out)
    return replace(chosen.res, path=out)


def _nncf(ctx: ExportContext, out: Path, threshold: float) -> list[Tried]:
    from export import openvino

    calib = images.calibration_set(ctx.loaded.preprocess, ctx.opts.calib_dir)
    xml = openvino.quantize_nncf(ctx.ref.fp32, out, calib)
    return [_try(ctx, openvino.NNCF_FORMAT, openvino.NNCF_WORDS, xml, threshold)]


def int8_step(ctx: ExportContext, version_dir: Path, method: str, threshold: float) -> tuple[Tried, dict[str, str]]:
    """Quantize into the INT8 model's ``version_dir`` and gate; the chosen candidate and its config parameters.

    Raises ExportError (nothing is written) when no candidate passes.
    """
    if method == "nncf":
        from export import openvino

        tried = _nncf(ctx, version_dir / openvino.IR_FILE, threshold)
    else:
        tried = _ort_qdq(ctx, version_dir / "model.onnx", threshold)
    chosen = _choose(tried, ctx.evaluation is not None)
    if not chosen.passed:
        raise ExportError(_refusal(ctx, tried, threshold))
    if method != "nncf":
        chosen = replace(chosen, res=_keep(chosen, tried, version_dir / "model.onnx"))
    params = {"export.int8_method": method, "export.int8_format": f"{chosen.fmt} ({chosen.words})",
              "export.int8_candidates": "; ".join(t.line() for t in tried),
              "export.int8_agreement": f"{chosen.res.agreement.top1:.4f}",
              "export.int8_score": f"{chosen.res.agreement.score:.4f}"}
    if chosen.verdict is not None:
        params |= chosen.verdict.params("int8")
    return chosen, params


def _refusal(ctx: ExportContext, tried: list[Tried], threshold: float) -> str:
    table = "; ".join(t.line() for t in tried)
    if ctx.evaluation is not None:
        return (f"INT8 gate failed on {ctx.evaluation.source} (at most {ctx.evaluation.max_drop:g} top-1 points "
                f"lost) for every format tried: {table}; calibrate on images like the ones you serve "
                "(--calib-dir); nothing was written")
    hint = (
        "with random weights predictions are meaningless, so agreement is too: pass --min-agreement 0 "
        "to accept it (the value is recorded as export.int8_score)"
        if ctx.loaded.weights == RANDOM
        else "calibrate on images like the ones you serve (--calib-dir), gate on a labelled set instead "
        "(--eval-dir DIR --max-top1-drop 1.0), or lower --min-agreement"
    )
    return (f"INT8 gate failed (score below {100 * threshold:.1f}%) for every format tried: {table}; {hint}; "
            "nothing was written")

