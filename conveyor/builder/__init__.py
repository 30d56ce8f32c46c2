"""Image builders: buildah, podman or docker, whichever is present or configured."""
