"""HTTP layer: routers, dependencies, schemas and error handling."""
