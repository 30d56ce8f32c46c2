"""Deploy target: an app's image as a container on this machine (podman or docker) behind HAProxy."""

from conveyor.targets.container_host.target import ContainerHost

__all__ = ["ContainerHost"]
