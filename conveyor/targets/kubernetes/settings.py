"""The settings an environment's `target: {type: kubernetes, …}` takes, registered under that type.

Cheap to import (pydantic only): the `kubernetes` client is never loaded here.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from conveyor.config.models import TargetSettings, register_target

TARGET_TYPE = "kubernetes"
K8S_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# "Deployment" (every Deployment) or "Deployment/web" (one resource).
K8S_RESOURCE = r"^[A-Z][A-Za-z0-9]*(/[a-z0-9]([a-z0-9.-]*[a-z0-9])?)?$"


class KubernetesTarget(TargetSettings):
    """Server-side apply of a folder of manifests into one namespace, verified like krane (see
    docs/kubernetes.md). Readiness is judged by the pods' own probes: the environment's `health:` settings
    do not apply here."""

    type: Literal["kubernetes"]
    health_applies: ClassVar[bool] = False
    kubeconfig: str | None = Field(
        None, description="kubeconfig file (~ expanded; relative paths start at the app repo root). "
        "Default: $KUBECONFIG, else ~/.kube/config, read on the machine that runs conveyor.",
    )
    context: str | None = Field(None, description="kubeconfig context (default: its current-context).")
    in_cluster: bool = Field(
        False, description="Use the service account of the pod conveyor runs in instead of a kubeconfig."
    )
    namespace: str = Field(pattern=K8S_NAME, description="The existing namespace the manifests go into.")
    manifests: str = Field(
        min_length=1, description="Folder of manifest YAML files, relative to the app repo root; read from "
        "the commit being deployed, never from uncommitted files.",
    )
    timeout: float = Field(300, gt=0, description="Seconds each resource has to roll out.")
    timeouts: dict[Annotated[str, Field(pattern=K8S_RESOURCE)], Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Per-resource rollout timeouts: {'Deployment/web': 600, 'Job': 900}."
    )
    prune: bool = Field(
        False, description="Delete objects carrying this app+env's conveyor labels that left the manifests "
        "(never namespaces, PVCs, PVs, CRDs or storage classes).",
    )
    task_workload: str | None = Field(
        None, pattern=K8S_RESOURCE, description="'Kind/name' of the workload whose pod settings pre-deploy "
        "tasks and `conveyor run` use (default: the first Deployment, StatefulSet or DaemonSet running the app "
        "image).",
    )

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> KubernetesTarget:
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError("in_cluster uses the pod's service account: leave kubeconfig and context unset")
        return self


register_target(TARGET_TYPE, KubernetesTarget)
