import os

# Tests run on the CPU whatever the machine has; the multi-device tests start their own processes.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
