"""imgserve: an image-classification service (docs/: the contract and the guides).

``service.http`` is the front end (routes, auth, limits, rendering, server processes),
``service.engine`` the engine (models, batching, admission, pipeline steps), ``service.runtimes`` the
runtimes behind one registry; ``config``, ``errors``, ``metrics`` and ``logging`` are shared by both.
The repository format itself is ``modelrepo``, shared with the exporter.
"""
