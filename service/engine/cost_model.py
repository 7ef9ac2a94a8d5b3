"""What the road from admission to a result costs, learnt from what it took: the batcher's
deadline-aware admission asks it.

Between admission and the result a request passes, in order:

1. the **pre stage**: its images wait for the decode pool behind the images admitted before it and
   are decoded (with ``--processes N`` also the trip from the front end). Learnt as the seconds from
   admission to ``submit`` per image in that stage (its own and those ahead), so the pool's width,
   the CPU it shares with inference and the IPC are all in the figure without being modelled;
2. the **device queue**: the images queued (and the batch waiting for an instance) run first, in
   batches of up to ``max_batch``, spread over the instances, after what is left of the batches in
   flight;
3. **its own batch**, at the cost of a batch of that size (learnt per batch size: a CPU runtime's
   batch of 8 costs less than 8 batches of 1).

Its images reach the device queue when the pre stage is done, or the device reaches them when what
is ahead is done, whichever is later: ``max(pre, device ahead) + own batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: EWMA weight of a new observation
ALPHA = 0.2
#: one outlier counts at most this many times over (or under) the estimate; a lasting change still shows
#: in a few batches
OUTLIER_CAP = 4.0
#: how far one batch moves the machine's speed (``level``), the batch size's own place (``shape``), and
#: how much of ``level`` passes into every size's place each batch (so ``level`` returns to 1 and a lasting
#: speed is every size's, run lately or not). Updates are in log space with a symmetric cap: noise has no
#: direction, so nothing drifts (a linear update capped on one side drifted ``level`` up without bound
#: while the sizes run kept their price by drifting down, and a size not run for a while was priced
#: 40-60x over after ~4,000 batches of noise).
LEVEL_GAIN, SHAPE_GAIN, TRANSFER = 0.35, 0.05, 0.02
#: EWMA weight of a new deviation of the estimate's error from its mean (TCP's RTTVAR gain)
BETA = 0.25
#: a promise keeps this many mean deviations of the estimate's error (TCP's retransmit timeout keeps 4)
MARGIN = 4.0


def _capped(ratio: float) -> float:
    return min(OUTLIER_CAP, max(1 / OUTLIER_CAP, ratio))


def _ewma(old: float, new: float, first: bool) -> float:
    if first:
        return new
    return old + ALPHA * (min(new, OUTLIER_CAP * old) - old)


@dataclass(frozen=True)
class Backlog:
    """What stands between a new request and the device at the moment it is admitted."""

    #: images admitted before it still in the pre stage (decode pool, IPC): they reach the queue first
    decoding: int = 0
    #: images in the device queue, and those of a batch formed but waiting for an instance
    queued: int = 0
    #: seconds each busy instance still needs for its batch (its estimate less what it has run)
    inflight_left: Sequence[float] = ()
    instances: int = 1
    max_batch: int = 1
    #: how much longer than estimated the longest-running batch in flight has run so far (1.0: none
    #: over its estimate): the machine is at least that much slower now than the costs learnt so far
    slowdown: float = 1.0

    @property
    def idle(self) -> bool:
        """Nothing decoding, queued or running: a request admitted now starts at once."""
        return not (self.decoding or self.queued or self.inflight_left)


class CostModel:
    """What a batch of each size costs, the pre stage per image, and how far the estimate was off.

    A batch's cost is ``level x shape[size]``: ``shape`` is the cost profile over batch sizes, learnt
    slowly, size by size; ``level`` is how fast the machine runs now, learnt fast from every batch, and
    what lasts of it passes into every size's place (``TRANSFER``). A size not seen for a while keeps its
    place in the profile and follows the machine's speed through ``level`` and that transfer,
    so a CPU that slows down (a quota, a noisy neighbour, a burst of requests to parse) shows in the
    price of every size after a few batches, not only of the sizes it has run since.
    """

    def __init__(self) -> None:
        self.samples = 0
        #: the machine's speed now (1.0: as when the profile was first measured)
        self.level = 1.0
        #: device seconds per batch at ``level`` 1, by batch size
        self.shape: dict[int, float] = {}
        #: images per batch, recently: the batch a request joins grows to about this under load
        self.typical_batch = 0.0
        #: seconds from admission to the device queue, per image in the pre stage
        self.pre_per_image = 0.0
        self.pre_samples = 0
        #: the estimate's relative error on finished requests (actual / estimate - 1): its mean, a bias the
        #: expected time corrects, and its mean deviation, the margin a promise keeps (as TCP times out)
        self.bias = 0.0
        self.spread = 0.0
        self.outcomes = 0

    def observe(self, size: int, seconds: float) -> None:
        """A batch of ``size`` images took ``seconds`` on an instance."""
        self.samples += 1
        self.typical_batch += (size - self.typical_batch) * (ALPHA if self.samples > 1 else 1.0)
        seconds = max(seconds, 1e-9)
        if size not in self.shape:
            self.shape[size] = seconds / self.level
            return
        # most of a surprise is the machine's speed (every size pays it); a little is this size's own
        self.level *= _capped(seconds / (self.level * self.shape[size])) ** LEVEL_GAIN
        self.shape[size] *= _capped(seconds / (self.level * self.shape[size])) ** SHAPE_GAIN
        # a lasting speed becomes every size's: the estimates stay as they are, ``level`` heads back to 1
        moved = self.level ** TRANSFER
        self.level /= moved
        for s in self.shape:
            self.shape[s] *= moved

    def observe_pre(self, images: int, seconds: float) -> None:
        """A request reached the device queue ``seconds`` after its admission, with ``images`` in the
        pre stage then (its own and those admitted before it)."""
        self.pre_per_image = _ewma(self.pre_per_image, seconds / max(1, images), not self.pre_samples)
        self.pre_samples += 1

    def observe_outcome(self, estimate: float, seconds: float) -> None:
        """A request estimated (``estimate``) to take that long took ``seconds`` from admission to its
        result (a 504's: to its deadline, a lower bound). The error is taken relative to at least one
        recent batch's cost, so a request that ran at once (a few ms) does not swing it."""
        floor = self.batch(max(1, round(self.typical_batch)))
        if max(estimate, floor) <= 0:
            return
        r = min(OUTLIER_CAP - 1, seconds / max(estimate, floor) - 1)
        if not self.outcomes:
            self.bias, self.spread = r, abs(r) / 2
        else:
            self.spread += BETA * (abs(r - self.bias) - self.spread)
            self.bias += ALPHA * (r - self.bias)
        self.outcomes += 1

    def expected(self, estimate: float) -> float:
        """``estimate`` corrected for the estimate's recent bias: when a request should be done."""
        return estimate * (1 + self.bias)

    def promise(self, estimate: float) -> float:
        """What admission may promise: the expected time plus ``MARGIN`` mean deviations of the error."""
        return estimate * (1 + self.bias + MARGIN * self.spread)

    def batch(self, size: int) -> float:
        """Seconds a batch of ``size`` images takes now: its place in the profile, or the nearest size's
        scaled linearly (an upper bound for a larger batch), at the machine's current speed."""
        if size <= 0 or not self.shape:
            return 0.0
        near = size if size in self.shape else min(self.shape, key=lambda s: (abs(s - size), -s))
        return self.level * self.shape[near] * size / near

    def estimate(self, backlog: Backlog, n: int, decodes: bool = True) -> float:
        """Seconds until ``n`` more images are done behind ``backlog`` (0 before any batch was measured).
        ``decodes``: they go through the pre stage first (False: model inputs already)."""
        if not self.samples:
            return 0.0
        size = max(1, backlog.max_batch)
        pre = (backlog.decoding + n) * self.pre_per_image if decodes else 0.0
        images = backlog.queued + backlog.decoding + n
        batches = -(-images // size)  # up to the one its last image runs in
        # Its own batch: what is left after the full batches ahead; behind a full batch or more (load), as
        # full as recent batches were, since whoever comes after it joins until an instance takes it.
        own = images - (batches - 1) * size
        if batches > 1:
            own = min(size, max(own, round(self.typical_batch)))
        slow = backlog.slowdown
        ahead = sum(backlog.inflight_left) + (batches - 1) * self.batch(size) * slow
        return max(pre, ahead / max(1, backlog.instances)) + self.batch(own) * slow
