"""Roles of setup keys, and so of the peers they enrol."""

# A JIT gateway: follows the known-peer feed (store/gateways.py), never gets a netmap.
GATEWAY_ROLE = "gateway"
