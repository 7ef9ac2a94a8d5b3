"""``python -m loadtest.tune``: the highest rate one model serves on this machine at a p99 target, the
configuration that serves it, and a run that proves it.

- ``search``: the bracketing search for one configuration's capacity (pure; tested on ``simulated``).
- ``space``: the configurations worth trying, pruned by the engine's measured batch costs (``costs``).
- ``tuner``: the search over the space within a time budget, the default measured in the same run, and
  the confirmation run at 90 % of the claimed capacity.
- ``live``: a configuration as a real server on loopback under open-loop Poisson arrivals of real JPEGs.
- ``output``: the table, JSON, PNG, ``--write`` (config.pbtxt) and the scaling files (HPA, locust).
"""
