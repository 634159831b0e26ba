import os

# Tests run on the CPU; several forced host devices only where a test asks.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
