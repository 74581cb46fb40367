"""The operators' interfaces: what a person or a probe sees of a running pool, and nothing it runs on.

One module each: ``status`` (the status record, from the supervisor's typed
snapshot), ``health`` (heartbeats, psutil readings, status.json, the one
verdict), ``metrics`` (/metrics, the one module that imports prometheus_client),
``tally`` (the counts behind it), ``probes`` (the HTTP endpoints), ``sdnotify``
(systemd), ``proctitle`` (process titles), ``logs`` and ``terminal`` (a writer's
text made safe to print). Nothing here imports a transport backend, and this
package imports nothing itself, so a worker that needs one module loads only it.
"""
