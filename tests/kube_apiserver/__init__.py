"""An in-repo Kubernetes API server for tests: real wire protocol, in-memory store, scripted controllers.

No kube-apiserver can run on the development machines, so the Kubernetes target is tested against this
server with the unmodified `kubernetes` Python client. It implements the parts of the API the target uses
(discovery, CRUD, LIST/WATCH with resourceVersions, server-side apply with field managers, Status
errors, pod logs) and a controller thread that plays the deployment, replicaset and job controllers,
the scheduler and the kubelet, with per-image behaviour chosen by the test. See fixture.py.
"""
