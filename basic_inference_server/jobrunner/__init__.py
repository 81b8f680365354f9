"""The job runner: runs the async jobs of endpoints that have no server of their own.

Pipelines, remote endpoints (``URLS``) and endpoints with ``VERSIONS`` have no server
that could pull their jobs (or, with versions, no single one that should). The job
runner pulls them and runs each through the gateway front's ``/run``, so traffic
weights, breakers, rollouts and pipelines apply when a job runs, not when it is queued.
"""
