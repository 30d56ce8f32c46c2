"""Connecting to a cluster: a kubeconfig context (tokens, client certificates, exec credential plugins of
`client.authentication.k8s.io/v1` and `v1beta1` as EKS and GKE write them) or the pod's service account.

The official client does the loading. Two gaps in it are filled here:
- a failing exec plugin is only logged by the client (`logging.error`) and the requests then go out
  without credentials, ending in a bare 401. We capture that log and raise it as conveyor's error, with
  the plugin's own message, before any request is made;
- it writes refreshed credentials back into the kubeconfig by default; conveyor never writes the user's
  kubeconfig (persist_config=False).
The client re-runs an exec plugin when the credential it returned expires (expirationTimestamp).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import BadInput, InfrastructureMissing

FIELD_MANAGER = "conveyor"
# Watches hold one connection each (pods, replicasets, the workloads) beside applies, log follows and
# event reads: more than the client's default pool of cpu_count * 5 on a small CI machine.
POOL_SIZE = 32


@dataclass
class Session:
    """An authenticated client for one cluster, plus the dynamic client for arbitrary kinds."""

    api: Any  # kubernetes.client.ApiClient
    host: str
    context: str
    cache_file: Path
    _dynamic: Any = field(default=None, repr=False)

    @property
    def dynamic(self) -> Any:
        if self._dynamic is None:
            from kubernetes import dynamic

            # A discovery cache per conveyor home and cluster: the client's default lives in /tmp keyed
            # by URL only, shared by every user and outliving clusters that reuse an address.
            self._dynamic = dynamic.DynamicClient(self.api, cache_file=str(self.cache_file))
        return self._dynamic

    def close(self) -> None:
        # closing a pool that was never used can fail in odd ways; there is nothing to do about it
        with contextlib.suppress(Exception):
            self.api.close()


class _Capture(logging.Handler):
    """Collects what the client logs while loading a kubeconfig (exec plugin failures)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def describe(cluster: dict[str, Any]) -> str:
    if cluster.get("in_cluster"):
        return "the pod's service account (in-cluster)"
    where = cluster.get("kubeconfig") or os.environ.get("KUBECONFIG") or "~/.kube/config"
    context = cluster.get("context") or "its current context"
    return f"kubeconfig {where}, {context}"


def load_configuration(cluster: dict[str, Any]) -> tuple[Any, str]:
    """A `kubernetes.client.Configuration` for the spec's cluster settings, and the context's name."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if cluster.get("in_cluster"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise InfrastructureMissing(f"in_cluster: cannot use the pod's service account: {exc}") from None
        return configuration, "in-cluster"

    path = cluster.get("kubeconfig")
    if path is None:
        # Like kubectl: $KUBECONFIG (colon-separated files are merged), else ~/.kube/config.
        path = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    paths = [p for p in str(path).split(os.pathsep) if p]
    if not any(Path(p).expanduser().is_file() for p in paths):
        raise InfrastructureMissing(f"no kubeconfig at {path} (set target.kubeconfig, $KUBECONFIG, or "
                                    "target.in_cluster)")
    context = cluster.get("context")
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)  # also keeps the client's log lines off the user's terminal
    try:
        config.load_kube_config(
            config_file=os.pathsep.join(str(Path(p).expanduser()) for p in paths),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
        loaded_context = context or _current_context(paths)
    except ConfigException as exc:
        raise BadInput(f"kubeconfig {path}: {exc}") from None
    except Exception as exc:  # the client raises plain errors for broken files (e.g. bad base64)
        raise BadInput(f"kubeconfig {path}: {type(exc).__name__}: {exc}") from None
    finally:
        root.removeHandler(capture)
    has_credentials = bool(configuration.api_key.get("BearerToken") or configuration.cert_file
                           or configuration.username)
    if capture.messages and not has_credentials:
        raise InfrastructureMissing(
            f"kubeconfig {path}, context {loaded_context}: getting credentials failed: "
            + "; ".join(m.strip() for m in capture.messages)
        )
    return configuration, loaded_context


def _current_context(paths: list[str]) -> str:
    import yaml

    for p in paths:
        try:
            data = yaml.safe_load(Path(p).expanduser().read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if data.get("current-context"):
            return str(data["current-context"])
    return "(current)"


def tls_refusal(exc: BaseException, host: str) -> BadInput | None:
    """A failed TLS handshake as one line, or None if `exc` is something else. Bad input (exit 2): the
    kubeconfig trusts the wrong CA, or holds a certificate the server will not take, and retrying will not
    help. urllib3 buries the ssl error under MaxRetryError.reason / __cause__, so walk the chain."""
    import ssl

    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, ssl.SSLCertVerificationError):
            return BadInput(f"TLS: the certificate of the cluster at {host} does not verify against the "
                            f"kubeconfig's certificate-authority: {node.verify_message}")
        if isinstance(node, ssl.SSLError):
            reason = str(node.reason or node).lower().replace("_", " ").removeprefix("sslv3 alert ")
            return BadInput(f"TLS: the cluster at {host} refused the handshake: {reason} (check the "
                            "kubeconfig's client certificate)")
        node = _wrapped(node)
    return None


def _wrapped(exc: BaseException) -> BaseException | None:
    """The error under `exc`: MaxRetryError.reason, urllib3.SSLError(ssl_error), else the cause."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    if exc.args and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return exc.__cause__ or exc.__context__


def connect(cluster: dict[str, Any], cache_dir: Path) -> Session:
    from kubernetes import client

    configuration, context = load_configuration(cluster)
    configuration.connection_pool_maxsize = POOL_SIZE
    api = client.ApiClient(configuration)
    api.user_agent = "conveyor"
    key = hashlib.sha256(f"{configuration.host}\0{context}".encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Session(api=api, host=configuration.host, context=context, cache_file=cache_dir / f"discovery-{key}.json")
