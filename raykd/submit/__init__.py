"""Searches on a Ray cluster through the Ray Jobs API: ``python -m raykd.submit``.

``package`` builds the job (runtime_env, entrypoint, ids), ``client`` talks to the
cluster's Jobs and state APIs over HTTP, ``auth`` reads Ray's token variables.
"""
