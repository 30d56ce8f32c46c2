"""conveyor.yml: models (config.models) and loading with file:line errors (config.loader)."""

CONFIG_NAME = "conveyor.yml"  # at the app repo's root; here so that naming it loads neither YAML nor pydantic
