"""The CPU test bed: a tiny random-weight model of the target architecture (Qwen3.6 vocabulary)."""
