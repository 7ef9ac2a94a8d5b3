"""The accuracy gate's measure and its check-set file (``modelrepo.checkset``): no model, no server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelrepo.checkset import (
    CONFIDENT_MARGIN,
    MIN_CONFIDENT,
    agreement,
    as_stored,
    read_check,
    write_check,
)
from modelrepo.cpu import parse_cpuinfo
from modelrepo.errors import RepositoryError

SHAPE = (3, 4, 4)
CLASSES = 10


def decided_logits(n: int, classes: int = CLASSES, seed: int = 0) -> np.ndarray:
    """Logits whose top class wins by a wide margin (FP32 is decided on every row)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, classes)).astype(np.float32)
    x[np.arange(n), rng.integers(0, classes, n)] += 10.0
    return x


def test_identical_logits_agree_fully() -> None:
    ref = decided_logits(32)
    a = agreement(ref, ref.copy())
    assert (a.score, a.top1, a.confident_top1, a.top5, a.images, a.confident) == (1.0, 1.0, 1.0, 1.0, 32, 32)
    assert "score 100.0%" in a.summary() and "32 of 32 images" in a.summary()


def test_flipped_decided_answers_lower_the_score() -> None:
    ref = decided_logits(32)
    cand = ref.copy()
    cand[:8] = np.roll(cand[:8], 1, axis=1)  # a quarter of the decided answers move to another class
    a = agreement(ref, cand)
    assert a.confident_top1 == pytest.approx(24 / 32) and a.score <= a.confident_top1


def test_near_ties_do_not_count_against_the_candidate() -> None:
    """Rows where FP32 is undecided (top two nearly equal) may flip within the top five at no cost."""
    ref = decided_logits(32)
    ref[:10] = 0.0
    ref[:10, 0], ref[:10, 1] = 1.0, 0.99  # near-ties: softmax margin far under CONFIDENT_MARGIN
    cand = ref.copy()
    cand[:10, 1] = 1.01  # each tie flips to the runner-up, still within FP32's top five
    a = agreement(ref, cand)
    assert a.confident == 22 >= MIN_CONFIDENT and CONFIDENT_MARGIN > 0
    assert a.top1 == pytest.approx(22 / 32) and a.score == 1.0


def test_few_decided_images_fall_back_to_plain_top1() -> None:
    ref = np.zeros((16, CLASSES), np.float32)
    ref[:, 0], ref[:, 1] = 1.0, 0.99  # nobody is decided
    cand = ref.copy()
    cand[:4, 1] = 1.01
    a = agreement(ref, cand)
    assert a.confident == 0 and a.confident_top1 == pytest.approx(12 / 16)


def test_agreement_refuses_logits_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="cannot be scored"):
        agreement(decided_logits(4), decided_logits(4, classes=5))
    with pytest.raises(ValueError, match="cannot be scored"):
        agreement(np.zeros((0, CLASSES)), np.zeros((0, CLASSES)))


def write_set(path: Path, n: int = 32, shape: tuple[int, ...] = SHAPE, classes: int = CLASSES) -> np.ndarray:
    inputs = as_stored(np.random.default_rng(1).standard_normal((n, *shape)).astype(np.float32))
    write_check(path, inputs, decided_logits(len(inputs), classes))
    return inputs


def test_a_written_check_set_reads_back(tmp_path: Path) -> None:
    inputs = write_set(tmp_path / "c.npz", n=40)
    got = read_check(tmp_path / "c.npz", SHAPE, CLASSES)
    assert got.inputs.dtype == np.float32 and got.inputs.shape == (32, *SHAPE)
    assert np.array_equal(got.inputs, inputs)  # as_stored already rounded them: float16 keeps them exactly
    assert got.reference.shape == (32, CLASSES)


@pytest.mark.parametrize(("damage", "match"), [
    ("missing", "is missing"),
    ("truncated", "cannot be read"),
    ("garbage", "cannot be read"),
    ("other_model", r"holds inputs of shape \(32, 3, 8, 8\), but the model takes \(3, 4, 4\)"),
    ("other_classes", "holds reference logits of shape"),
    ("nan", "NaN/Inf"),
])
def test_a_bad_check_set_is_a_repository_error_naming_the_file(tmp_path: Path, damage: str, match: str) -> None:
    path = tmp_path / "gate_check.npz"
    if damage == "other_model":
        write_set(path, shape=(3, 8, 8))
    elif damage == "other_classes":
        write_set(path, classes=CLASSES + 1)
    elif damage == "nan":
        inputs = write_set(path)
        ref = decided_logits(len(inputs))
        ref[0, 0] = np.nan
        write_check(path, inputs, ref)
    elif damage != "missing":
        write_set(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a zip file at all")
    with pytest.raises(RepositoryError, match=match) as err:
        read_check(path, SHAPE, CLASSES)
    assert str(path) in err.value.message


def test_cpu_class_from_cpuinfo() -> None:
    avx2 = parse_cpuinfo("model name\t: AMD EPYC 7551\nflags\t\t: sse4_2 avx2 fma\n")
    assert avx2.cpu_class == "avx2" and not avx2.int8_exact and not avx2.bf16
    assert avx2.describe() == "AMD EPYC 7551 (avx2: no VNNI, no BF16)"
    flags = "avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_tile amx_int8"
    amx = parse_cpuinfo(f"model name : Xeon\nflags : {flags}\n")
    assert amx.cpu_class == "amx" and amx.int8_exact and amx.bf16
