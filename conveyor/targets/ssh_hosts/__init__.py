"""Deploy target: a fleet of hosts reached over SSH, each running the container-host target (podman or
docker behind its own HAProxy), deployed in rolling batches."""
