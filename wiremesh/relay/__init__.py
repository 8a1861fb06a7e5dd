"""The relay: forwards WireGuard packets between peers over WebSocket (embedded or standalone)."""
