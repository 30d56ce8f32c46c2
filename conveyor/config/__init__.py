"""conveyor.yml: models (config.models) and loading with file:line errors (config.loader)."""
