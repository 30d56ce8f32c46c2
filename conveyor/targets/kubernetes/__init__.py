"""The Kubernetes target: server-side apply, rollout verdicts as good as krane's, tasks as Jobs/Pods.

This package must stay cheap to import: the `kubernetes` client is imported lazily by the modules that
talk to a cluster, never here, so `conveyor --help` does not pay for it.
"""
