"""OCI registry adapter: look up manifests by tag or digest over the Distribution HTTP API."""
