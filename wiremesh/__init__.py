"""wiremesh: a WireGuard mesh overlay."""
