"""Load tests and the benchmark harness: ``python -m loadtest.bench``, ``locust -f loadtest/locustfile.py``."""
