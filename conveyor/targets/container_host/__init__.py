"""Deploy target: an app's image as a container on this machine (podman or docker) behind Caddy."""

from conveyor.targets.container_host.target import ContainerHost

__all__ = ["ContainerHost"]
