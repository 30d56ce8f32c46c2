"""conveyor.yml: models (config.models) and loading with file:line errors (config.loader)."""

CONFIG_NAME = "conveyor.yml"  # at the root of the app's repo, in every commit that ships
