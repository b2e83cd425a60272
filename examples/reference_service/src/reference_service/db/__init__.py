"""The domain's database: models, the engine, migrations and the repository."""
