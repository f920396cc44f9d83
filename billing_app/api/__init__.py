"""The JSON API: thin FastAPI routes over the services, mounted in front of Reflex."""
