"""Launching llama-server: profiles, YaRN and memory arithmetic, preflight, sessions, GGUF, RPC."""
