"""``multibox serve``: an HTTP detection service with a browser page (docs/serve.md).

:mod:`.app` builds the FastAPI application (routes, limits, the page), :mod:`.batcher` the micro-batching,
:mod:`.metrics` the Prometheus text metrics. FastAPI and uvicorn are the optional extra ``multibox[serve]``: this
package is imported only by ``multibox serve`` and ``multibox bench serve`` when they run.
"""
