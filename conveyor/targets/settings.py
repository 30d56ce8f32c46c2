"""Registers every target type's settings model with the config (importing this is enough): conveyor.yml's
`target:` sections are validated by the model of their type. Cheap: pydantic only, no target's client."""

from conveyor.targets.container_host import settings as container_host
from conveyor.targets.heroku import settings as heroku
from conveyor.targets.kubernetes import settings as kubernetes
from conveyor.targets.ssh_hosts import settings as ssh_hosts

__all__ = ["container_host", "heroku", "kubernetes", "ssh_hosts"]
