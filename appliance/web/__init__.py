"""The HTTP front: request routing, delivery from the cache, CONNECT tunnels."""
