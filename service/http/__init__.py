"""The ASGI side: the adapter that serves Flask and the layers every request passes through."""
