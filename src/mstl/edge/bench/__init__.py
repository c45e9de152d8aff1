"""Accuracy, latency, size and memory of exported artifacts on the machine it runs on.
No TensorFlow here (a Raspberry Pi has none): .keras artifacts are measured only where it is installed."""
