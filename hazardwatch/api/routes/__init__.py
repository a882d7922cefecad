"""The API's routers, one per resource; ``hazardwatch.api.app.create_app`` composes them."""
