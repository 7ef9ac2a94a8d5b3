"""``imgserve``: one command in front of the project's entry points (``imgserve_cli.main``).

Each subcommand hands its arguments, unchanged, to an existing module's ``main`` (``imgserve serve`` is
``python -m service``, ``imgserve export`` is ``python -m export``, ...), imported only when it runs: the
command itself imports nothing heavy, and every ``python -m`` form keeps working on its own.
"""
