"""The `heroku` target: an app per environment, its container images released through the Platform API."""
