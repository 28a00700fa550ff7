"""The engine: models, data, training, scoring. Never imports typer or rich, never prints."""
