"""The HTTP front end: the app, its routes, auth and rate limits, the result cache, connection and
body guards, the one error renderer (``errors``), the server process and the ``--processes`` supervisor.

Routes parse a request, call the engine (``service.engine.Engine``: classify or infer) and render the
answer; they never touch a batcher, a runtime or a pipeline step themselves.
"""
