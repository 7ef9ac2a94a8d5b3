"""The engine: model versions and their lifecycle (``manager``), dynamic batching and deadline-aware
admission (``batching``), the instance pool and watchdog (``guards``), pipeline steps (``pipeline``,
``preprocess``, ``gpu_decode``) and the one admit -> pre -> run -> post -> release protocol (``engine``)
that every protocol's route calls. Nothing here knows HTTP; nothing in ``batching`` knows torch.
"""
