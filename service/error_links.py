"""Where an error answer points for help: its entry in the error catalogue (``service.error_catalogue``).

``help_link(code)`` is the one place every renderer (HTTP, KServe v2, gRPC, the connection guard) gets the
link from: ``<docs_url>/reference/errors/#<code>`` when ``--docs-url`` names the published documentation,
else the page in the repository, ``docs/reference/errors.md#<code>``. The app sets the URL at start
(``create_app``), so the gRPC server and the connection guard of that process link alike.
"""

from __future__ import annotations

#: the catalogue page inside the repository (generated from ``service.error_catalogue.render_markdown``)
REPO_PAGE = "docs/reference/errors.md"
#: the same page on a published documentation site (mkdocs' directory URLs)
SITE_PAGE = "reference/errors/"

_docs_url: str | None = None


def configure_docs_url(docs_url: str | None) -> None:
    """Link to the site at ``docs_url`` from now on (None or empty: to the page in the repository)."""
    global _docs_url
    _docs_url = docs_url.rstrip("/") if docs_url else None


def help_link(code: str) -> str:
    """The catalogue entry of the machine error ``code``."""
    if _docs_url:
        return f"{_docs_url}/{SITE_PAGE}#{code}"
    return f"{REPO_PAGE}#{code}"


def with_help(message: str, code: str) -> str:
    """``message`` with its catalogue link, for the shapes that carry only a string (KServe v2, gRPC)."""
    return f"{message} (see {help_link(code)})"
