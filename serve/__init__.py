"""The HTTP service (Ray Serve): see serve/app.py, and serve/config.yaml to deploy it."""
