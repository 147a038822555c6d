"""The model registry: registered versions (image digest, snapshot, canary) and the `production` alias,
stored as JSON objects in every site's object store so a DR site can read it with the primary gone."""
