"""KubeApi: a running test API server with its controllers, kubeconfig and test controls."""

from __future__ import annotations

import base64
import secrets
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from . import openapi
from .controllers import Controllers
from .kubelet import Behaviour
from .pki import Pki, session_pki
from .resources import resource_for
from .selectors import label_matcher
from .server import ApiServer, RequestRecord
from .store import Store

T = TypeVar("T")
# How a kubeconfig's user authenticates: a bearer token, or a client certificate (embedded or as files).
CREDENTIALS = ("token", "client-certificate-data", "client-certificate-files")
# How a kubeconfig's cluster names the CA it trusts: embedded, as a file, or another CA altogether.
CA_CHOICES = ("data", "file", "wrong")
ADMIN = "conveyor-admin"
BEHAVIOURS = (
    "healthy",
    "slow",
    "stuck",
    "crashloop",
    "image-not-found",
    "config-error",
    "unschedulable",
    "succeeds",
    "fails",
)


class KubeApi:
    """A running server plus the handles a test needs to script and inspect it."""

    def __init__(
        self,
        directory: Path,
        step: float = 0.1,
        history_size: int = 1000,
        port: int = 0,
        expired_certificate: bool = False,
    ) -> None:
        self.pki: Pki = session_pki()
        # Built once per process (it imports the client's models): here, not inside a test's first write.
        openapi.discovery_document()
        self.token = secrets.token_urlsafe(24)
        self.store = Store(history_size)
        self.server = ApiServer(
            self.store, {self.token: ADMIN}, self.pki, port=port, expired_certificate=expired_certificate
        ).start()
        self.controllers = Controllers(self.store, step).start()
        self.url = self.server.url
        # Two ways in, both over TLS: a bearer token, and a client certificate whose CN is the user.
        self.kubeconfig_path = directory / "kubeconfig"
        self.kubeconfig_path.write_text(yaml.safe_dump(self.kubeconfig()))
        self.cert_kubeconfig_path = directory / "kubeconfig-client-cert"
        self.cert_kubeconfig_path.write_text(
            yaml.safe_dump(self.kubeconfig(credentials="client-certificate-data"))
        )

    def kubeconfig(
        self,
        context: str = "conveyor-test",
        namespace: str = "default",
        credentials: str = "token",
        ca: str = "data",
        user: str = ADMIN,
        expired_client_certificate: bool = False,
    ) -> dict[str, Any]:
        """A kubeconfig for this server. credentials: one of CREDENTIALS; ca: one of CA_CHOICES."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url, **self._trust(ca)}}],
            "users": [{"name": context, "user": self._credentials(credentials, user, expired_client_certificate)}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}
            ],
            "current-context": context,
        }

    def _trust(self, ca: str) -> dict[str, str]:
        if ca == "file":
            return {"certificate-authority": str(self.pki.ca.cert_file)}
        pem = self.pki.wrong_ca.cert_pem if ca == "wrong" else self.pki.ca.cert_pem
        if ca not in CA_CHOICES:
            raise ValueError(f"ca: choose from {', '.join(CA_CHOICES)}")
        return {"certificate-authority-data": base64.b64encode(pem).decode()}

    def _credentials(self, credentials: str, user: str, expired: bool) -> dict[str, str]:
        if credentials == "token":
            return {"token": self.token}
        pair = self.pki.client(user, expired=expired)
        if credentials == "client-certificate-files":
            return {"client-certificate": str(pair.cert_file), "client-key": str(pair.key_file)}
        if credentials != "client-certificate-data":
            raise ValueError(f"credentials: choose from {', '.join(CREDENTIALS)}")
        return {
            "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
            "client-key-data": base64.b64encode(pair.key_pem).decode(),
        }

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side context trusting this cluster's CA, for tests that speak raw HTTPS."""
        return ssl.create_default_context(cafile=str(self.pki.ca.cert_file))

    # --- scripting ---------------------------------------------------------------------------------

    def behave(self, image: str, behaviour: str, **params: Any) -> None:
        """How pods running `image` behave. `image` matches exactly, or by repository (no tag/digest).

        params: ready_after (slow, seconds), run_seconds / exit_code (succeeds, fails), logs (lines each
        run writes), message (unschedulable / config-error text).
        """
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; choose from {', '.join(BEHAVIOURS)}")
        self.controllers.behaviours[image] = Behaviour(behaviour, **params)

    def pause(self) -> None:
        """Stop the controllers and kubelet (the API keeps serving), e.g. to hold a status still."""
        self.controllers.paused.set()

    def resume(self) -> None:
        self.controllers.paused.clear()

    def compact(self) -> int:
        """Drop the watch history (like etcd compaction); returns the resourceVersion it compacted to."""
        return self.store.compact()

    @staticmethod
    def store_resource(kind: str) -> Any:
        """The Resource to pass to `store` methods (create, mutate) for a kind or plural."""
        return resource_for(kind)

    def first_write(self, kind: str, matches: Callable[[dict[str, Any]], bool]) -> Callable[[], float | None]:
        """Start timing: returns a function giving the time.monotonic() at which an object of `kind`
        matching `matches` was first written (None while none was), e.g. the first doomed pod status."""
        key = resource_for(kind).key
        seen: list[float] = []

        def listener(event: Any) -> None:
            if not seen and event.key == key and event.type != "DELETED" and matches(event.obj):
                seen.append(time.monotonic())

        self.store.listeners.append(listener)
        return lambda: seen[0] if seen else None

    # --- inspection -----------------------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """An object as stored, by kind ("Deployment") or plural ("deployments")."""
        return self.store.get(resource_for(kind), namespace, name)

    def list(
        self, kind: str, namespace: str | None = "default", label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        return self.store.list(resource_for(kind), namespace, label_matcher(label_selector))[0]

    def events(
        self, namespace: str | None = "default", involved_name: str | None = None
    ) -> list[dict[str, Any]]:
        events = self.list("Event", namespace)
        if involved_name is not None:
            events = [e for e in events if e["involvedObject"]["name"] == involved_name]
        return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def logs(self, pod: str, container: str | None = None, namespace: str = "default") -> list[str]:
        if container is None:
            found = self.get("Pod", pod, namespace)
            container = found["spec"]["containers"][0]["name"] if found else ""
        return [line for _, line in self.store.read_log(namespace, pod, container)]

    @property
    def resource_version(self) -> int:
        return self.store.current_rv()

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request the server received, oldest first."""
        return list(self.server.requests)

    def wait_for(self, check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
        """Poll `check` until it returns something truthy; fail the test with the last value on timeout."""
        deadline = time.monotonic() + timeout
        value = check()
        while not value:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {check} (last value {value!r})")
            time.sleep(interval)
            value = check()
        return value

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for this server (the client library is imported only here)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig_path), client_configuration=configuration)
        return client.ApiClient(configuration)

    def close(self) -> None:
        self.controllers.stop()
        self.server.stop()
