"""What a batch costs, learnt from the batches run: the batcher's deadline-aware admission asks it."""

from __future__ import annotations


class CostModel:
    """EWMA of the compute time per image (alpha 0.2), for deadline-aware admission."""

    def __init__(self) -> None:
        self.per_image = 0.0
        self.samples = 0

    def observe(self, size: int, seconds: float) -> None:
        per_image = seconds / size
        if self.samples:  # one outlier moves the estimate at most 4x; a lasting slowdown still shows in a few
            per_image = min(per_image, 4 * self.per_image)
        alpha = 0.2 if self.samples else 1.0
        self.per_image += alpha * (per_image - self.per_image)
        self.samples += 1

    def predict(self, images_ahead: int, n: int, max_batch: int, instances: int = 1) -> float:
        """Seconds until ``n`` more images are done with ``images_ahead`` queued before them."""
        if not self.samples:
            return 0.0
        # Images ahead run first (in batches, spread over the instances), then ours; plus one batch
        # in flight on average.
        return (images_ahead + n + max_batch / 2) * self.per_image / instances
