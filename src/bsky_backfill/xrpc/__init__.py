"""xrpc layer."""
