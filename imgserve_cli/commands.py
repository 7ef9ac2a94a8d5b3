"""The subcommands of ``imgserve``: which module's ``main`` each one runs. Data only; nothing is imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    module: str  #: the module whose ``main`` runs (``main(argv)``, or ``main()`` reading ``sys.argv``)
    summary: str  #: one line for ``imgserve --help``
    prog: str | None = None  #: the module's own argparse ``prog``, shown as ``imgserve <name>`` instead
    extra: str | None = None  #: the pip extra that brings the command's dependencies
    #: modules whose file is put first on the command line as ``-f FILE`` (locust's locustfile)
    locustfile: str | None = None

    @property
    def source(self) -> str:
        """What the command runs, as it runs without ``imgserve``."""
        if self.locustfile:
            return f"locust -f {self.locustfile.replace('.', '/')}.py"
        return self.prog or f"python -m {self.module}"


COMMANDS: tuple[Command, ...] = (
    Command("serve", "service.__main__", "run the service: HTTP and KServe v2 over gRPC, dynamic batching",
            prog="python -m service"),
    Command("classify", "service.client", "classify image files with a running service",
            prog="python -m service.client"),
    Command("export", "export.cli", "export a torchvision/timm model into the model repository",
            prog="python -m export", extra="export"),
    Command("evaluate", "export.evaluate", "top-1/top-5 of a served model's runtimes on a labelled set",
            prog="python -m export.evaluate", extra="export"),
    Command("bench", "loadtest.bench", "benchmark: engine limit vs the service vs a naive server (wrk)",
            prog="python -m loadtest.bench", extra="loadtest"),
    Command("tune", "loadtest.tune.cli", "the highest rate a model serves here at a p99 target, and its settings",
            prog="python -m loadtest.tune", extra="loadtest"),
    Command("overload", "loadtest.overload", "time load shedding and per-key rate limits under overload",
            prog="python -m loadtest.overload", extra="loadtest"),
    Command("locust", "locust.main", "realistic mixed traffic against a running service (add --host URL)",
            extra="loadtest", locustfile="loadtest.locustfile"),
    Command("gpu-prepare", "loadtest.gpu_prepare", "GPU check step 1: what the GPU machine lacks, into .gpucheck/",
            prog="python -m loadtest.gpu_prepare", extra="loadtest"),
    Command("gpu-check", "loadtest.gpu_check", "GPU check step 2: the measurement (run --out DIR [--dry-run])",
            prog="python -m loadtest.gpu_check", extra="loadtest"),
)

BY_NAME = {c.name: c for c in COMMANDS}
